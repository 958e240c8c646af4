//! `/etc/flowstage/flowstage.toml`, read in two stages: [`RawConfig`] is exactly what
//! the file may say (unknown keys are errors), [`RawConfig::validate`] turns it into a
//! checked [`Config`]. Defaults are documented on each field and in
//! `provision/flowstage.example.toml`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::collector::worker::MAX_SAMPLING_RATE;
use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/flowstage/flowstage.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

fn invalid(key: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub collector: RawCollector,
    /// Known exporters: names and per-exporter settings.
    #[serde(default, rename = "exporter")]
    pub exporters: Vec<RawExporter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// libpq-style URL. Default: the local socket, database and user `flowstage`.
    pub url: Option<String>,
    /// File holding the password (the installer's secrets file, mode 0600).
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollector {
    /// UDP listen addresses. Default `["0.0.0.0:2055", "[::]:2055"]`.
    pub listen: Option<Vec<String>>,
    /// Spool and archive directory. Default `/var/lib/flowstage`.
    pub data_dir: Option<PathBuf>,
    /// Prometheus metrics listener, e.g. `127.0.0.1:9655`. Default: off.
    pub metrics: Option<String>,
    /// Keys kept per bucket for high-cardinality reports. Default 200.
    pub top_n: Option<usize>,
    /// Decode/aggregate threads. Default: one per CPU.
    pub workers: Option<usize>,
    /// Socket receive buffer in bytes. Default 32 MiB.
    pub receive_buffer_bytes: Option<usize>,
    /// Seconds a minute bucket stays open after the minute ends. Default 60.
    pub flush_grace_secs: Option<u64>,
    /// Upper bound of the on-disk spool used while the database is away. Default 1 GiB.
    pub spool_max_bytes: Option<u64>,
    /// Only these addresses or networks may export; empty allows all. Default empty.
    pub allowed_exporters: Option<Vec<String>>,
    /// Seconds between STAT log lines. Default 60; 0 turns them off.
    pub stats_interval_secs: Option<u64>,
    /// Seconds data waits for its template before it is counted as expired. Default 60.
    pub template_wait_secs: Option<u64>,
    /// Keys a bucket tracks per report kind (heavy-hitter table size); when a bucket has
    /// more distinct keys, the smallest are folded into "other". Default 1024.
    pub max_keys_per_bucket: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExporter {
    pub address: String,
    pub name: Option<String>,
    /// Overrides whatever sampling rate the exporter announces.
    pub sampling_rate: Option<u32>,
}

/// A validated configuration.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub collector: CollectorConfig,
    pub exporters: Vec<ExporterConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("collector", &self.collector)
            .field("exporters", &self.exporters)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub listen: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub top_n: usize,
    pub workers: usize,
    pub receive_buffer_bytes: usize,
    pub flush_grace_secs: u64,
    pub spool_max_bytes: u64,
    pub allowed_exporters: Vec<IpNet>,
    pub stats_interval_secs: u64,
    pub template_wait_secs: u64,
    pub max_keys_per_bucket: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    pub address: IpAddr,
    pub name: Option<String>,
    pub sampling_rate: Option<u32>,
}

pub const DEFAULT_DATABASE_URL: &str =
    "postgresql:///flowstage?host=/var/run/postgresql&user=flowstage";

/// Replace the password of a libpq URL or key/value string with `***`.
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url.split_once("://") {
        let (scheme, rest) = rest;
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        let mut out = format!("{scheme}://{rest}");
        if let Some(i) = out.find("password=") {
            let end = out[i..].find('&').map(|e| i + e).unwrap_or(out.len());
            out.replace_range(i + 9..end, "***");
        }
        return out;
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>().map_err(|_| {
        invalid(
            "collector.listen",
            s,
            "expected ADDRESS:PORT, e.g. 0.0.0.0:2055 or [::]:2055",
        )
    })
}

impl RawConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let c = self.collector;
        let listen = match c.listen {
            Some(list) => list
                .iter()
                .map(|s| parse_listen(s))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![parse_listen("0.0.0.0:2055")?, parse_listen("[::]:2055")?],
        };
        if listen.is_empty() {
            return Err(invalid(
                "collector.listen",
                "[]",
                "at least one listen address is needed",
            ));
        }
        let metrics = c
            .metrics
            .map(|m| {
                m.parse::<SocketAddr>()
                    .map_err(|_| invalid("collector.metrics", &m, "expected ADDRESS:PORT"))
            })
            .transpose()?;
        let top_n = c.top_n.unwrap_or(200);
        if !(1..=10_000).contains(&top_n) {
            return Err(invalid(
                "collector.top_n",
                top_n,
                "must be between 1 and 10000",
            ));
        }
        let max_keys = c.max_keys_per_bucket.unwrap_or(1024);
        if max_keys < top_n || max_keys > 1 << 20 {
            return Err(invalid(
                "collector.max_keys_per_bucket",
                max_keys,
                "must be at least collector.top_n and at most 1048576",
            ));
        }
        let workers = match c.workers.unwrap_or(0) {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n if n > 256 => return Err(invalid("collector.workers", n, "must be at most 256")),
            n => n,
        };
        let allowed_exporters = c
            .allowed_exporters
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "collector.allowed_exporters",
                            s,
                            "expected an address or a network like 192.0.2.0/24",
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut exporters = Vec::new();
        for (i, e) in self.exporters.into_iter().enumerate() {
            let address = e.address.parse::<IpAddr>().map_err(|_| {
                invalid(
                    format!("exporter[{i}].address"),
                    &e.address,
                    "expected an IP address",
                )
            })?;
            if let Some(rate) = e
                .sampling_rate
                .filter(|r| !(1..=MAX_SAMPLING_RATE).contains(r))
            {
                return Err(invalid(
                    format!("exporter[{i}].sampling_rate"),
                    rate,
                    "must be between 1 and 16777216 (2^24)",
                ));
            }
            if exporters
                .iter()
                .any(|x: &ExporterConfig| x.address == address)
            {
                return Err(invalid(
                    format!("exporter[{i}].address"),
                    address,
                    "listed twice",
                ));
            }
            exporters.push(ExporterConfig {
                address,
                name: e.name,
                sampling_rate: e.sampling_rate,
            });
        }
        let mut database_url = self
            .database
            .url
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        if let Some(file) = self.database.password_file {
            let password = std::fs::read_to_string(&file).map_err(|error| ConfigError::Read {
                path: file.clone(),
                error,
            })?;
            let sep = if database_url.contains('?') { '&' } else { '?' };
            database_url = format!(
                "{database_url}{sep}password={}",
                percent_encode(password.trim())
            );
        }
        Ok(Config {
            database_url,
            collector: CollectorConfig {
                listen,
                data_dir: c
                    .data_dir
                    .unwrap_or_else(|| PathBuf::from("/var/lib/flowstage")),
                metrics,
                top_n,
                workers,
                receive_buffer_bytes: c.receive_buffer_bytes.unwrap_or(32 << 20),
                flush_grace_secs: c.flush_grace_secs.unwrap_or(60),
                spool_max_bytes: c.spool_max_bytes.unwrap_or(1 << 30),
                allowed_exporters,
                stats_interval_secs: c.stats_interval_secs.unwrap_or(60),
                template_wait_secs: c.template_wait_secs.unwrap_or(60),
                max_keys_per_bucket: max_keys,
            },
            exporters,
        })
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Config {
    /// Load `path`; a missing file at the default location means all defaults, so the
    /// collector runs without any installer.
    pub fn load_or_default(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() && path == Path::new(DEFAULT_CONFIG_PATH) {
            return RawConfig::default().validate();
        }
        RawConfig::load(path)?.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err =
            RawConfig::from_toml("[collector]\nlisten_on = []\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_quoted() {
        let raw = RawConfig::from_toml(
            "[collector]\nlisten = [\"1.2.3.4:99999\"]\n",
            Path::new("x"),
        )
        .unwrap();
        let err = raw.validate().unwrap_err().to_string();
        assert!(
            err.contains("collector.listen") && err.contains("1.2.3.4:99999"),
            "{err}"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgresql://u:secret@h/db"),
            "postgresql://u:***@h/db"
        );
        assert_eq!(
            redact_url("postgresql:///db?host=/tmp&password=secret&user=u"),
            "postgresql:///db?host=/tmp&password=***&user=u"
        );
        assert_eq!(
            redact_url("host=/tmp password=secret"),
            "host=/tmp password=***"
        );
    }

    #[test]
    fn password_file_is_appended_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-password");
        std::fs::write(&file, "s3cr&t\n").unwrap();
        let text = format!(
            "[database]\nurl = \"postgresql:///flowstage?host=/run/postgresql\"\npassword_file = \"{}\"\n",
            file.display()
        );
        let config = RawConfig::from_toml(&text, Path::new("x"))
            .unwrap()
            .validate()
            .unwrap();
        assert!(
            config.database_url.ends_with("&password=s3cr%26t"),
            "{}",
            config.database_url
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
    }

    #[test]
    fn sampling_override_is_bounded() {
        let raw = RawConfig::from_toml(
            "[[exporter]]\naddress = \"192.0.2.1\"\nsampling_rate = 0\n",
            Path::new("x"),
        )
        .unwrap();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("exporter[0].sampling_rate"), "{err}");
    }
}
