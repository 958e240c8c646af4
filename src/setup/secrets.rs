//! The appliance's secrets (database password, web session key): generated once at
//! install into `/etc/flowstage/secrets.toml` (mode 0600, owner flowstage), reused on
//! every later run, never printed or logged. The operator's SNMP credentials
//! (`[snmp.NAME]` tables) live in the same file and are carried over on every rewrite.

use anyhow::Context;

use super::host::Host;
use super::render::SECRETS_PATH;

#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    pub database_password: String,
    pub session_key: String,
    /// The operator's `[snmp.NAME]` tables, as TOML text, kept as they are.
    pub snmp: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// `bytes` random bytes from the kernel, hex-encoded (safe in URLs, SQL and TOML).
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)
        .map_err(|e| anyhow::anyhow!("reading random bytes from the kernel: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn valid_secret(s: &str) -> bool {
    s.len() >= 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Secrets {
    pub fn generate() -> anyhow::Result<Secrets> {
        Ok(Secrets {
            database_password: random_hex(24)?,
            session_key: random_hex(32)?,
            snmp: None,
        })
    }

    /// The secrets on disk, if the file exists and holds valid ones.
    pub fn load(host: &Host) -> anyhow::Result<Option<Secrets>> {
        let path = host.path(SECRETS_PATH);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // Parse errors would quote the file; say only where it is.
        let table: toml::Table = text.parse().map_err(|_| {
            anyhow::anyhow!(
                "{} is damaged (not valid TOML): restore it from {}, or delete it to generate new secrets",
                path.display(),
                super::files::BACKUP_ROOT
            )
        })?;
        let get = |k: &str| {
            table
                .get(k)
                .and_then(|v| v.as_str())
                .filter(|s| valid_secret(s))
                .map(str::to_string)
        };
        let snmp = match table.get("snmp") {
            Some(toml::Value::Table(t)) if !t.is_empty() => {
                let mut wrapper = toml::Table::new();
                wrapper.insert("snmp".into(), toml::Value::Table(t.clone()));
                Some(toml::to_string(&wrapper).context("keeping the [snmp] credentials")?)
            }
            _ => None,
        };
        Ok(match (get("database_password"), get("session_key")) {
            (Some(database_password), Some(session_key)) => Some(Secrets {
                database_password,
                session_key,
                snmp,
            }),
            // Replacing it would silently change the database password under the
            // running daemons.
            _ => anyhow::bail!(
                "{} is damaged (a secret is missing or malformed): restore it from {}, or delete it to generate new secrets",
                path.display(),
                super::files::BACKUP_ROOT
            ),
        })
    }

    /// Reuse the secrets on disk, or generate new ones (second value: generated now).
    pub fn load_or_generate(host: &Host) -> anyhow::Result<(Secrets, bool)> {
        match Secrets::load(host)? {
            Some(s) => Ok((s, false)),
            None => Ok((Secrets::generate()?, true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_long_distinct_and_hidden() {
        let a = Secrets::generate().unwrap();
        let b = Secrets::generate().unwrap();
        assert!(valid_secret(&a.database_password) && valid_secret(&a.session_key));
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(&a.database_password));
    }

    #[test]
    fn snmp_credentials_survive_a_rewrite() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(Some(root.path().to_path_buf()));
        let path = host.path(SECRETS_PATH);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let key = "0123456789abcdef0123456789abcdef0123456789abcdef";
        std::fs::write(
            &path,
            format!("database_password = \"{key}\"\nsession_key = \"{key}\"\n\n[snmp.core]\nversion = \"2c\"\ncommunity = \"c0mm\"\n"),
        )
        .unwrap();
        let s = Secrets::load(&host).unwrap().unwrap();
        let kept = s.snmp.clone().unwrap();
        let reparsed: toml::Table = kept.parse().unwrap();
        assert_eq!(reparsed["snmp"]["core"]["community"].as_str(), Some("c0mm"));
        assert!(!format!("{s:?}").contains("c0mm"));
    }
}
