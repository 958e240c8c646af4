//! Users, roles and grants, shared by `flowstage-setup users` and the web daemon:
//! argon2id password hashes, the admin and viewer roles, grants as rules (an exporter,
//! one interface, interfaces whose description matches, or an interface group) that
//! the database evaluates at query time, and the audit log of every change.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio_postgres::Client;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user name {0:?}: use 1 to 64 lower-case letters, digits, dots, dashes, underscores")]
    InvalidName(String),
    #[error("role {0:?}: expected admin or viewer")]
    InvalidRole(String),
    #[error("no user {0:?}")]
    NotFound(String),
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no interface group {0:?}")]
    UnknownGroup(String),
    #[error("description pattern {0:?} is not a valid regular expression: {1}")]
    InvalidRegex(String, String),
    #[error("no interface {0:?} (exporter address or name, and ifIndex, as seen in flows)")]
    NoInterface(String),
    #[error("user {user:?} has no grant {id}")]
    NoSuchGrant { user: String, id: i32 },
    #[error("password: {0}")]
    Password(String),
    #[error("{0:?} is the last active admin; make another user an admin first")]
    LastAdmin(String),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Role, UserError> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(UserError::InvalidRole(other.to_string())),
        }
    }
}

pub fn validate_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidName(name.to_string()))
    }
}

/// An argon2id hash (PHC string) of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UserError> {
    if password.chars().count() < 10 {
        return Err(UserError::Password("use at least 10 characters".into()));
    }
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| UserError::Password(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Password(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Password(e.to_string()))
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A random password that is easy to type: 20 characters without look-alikes.
pub fn generate_password() -> Result<String, UserError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY346789";
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes).map_err(|e| UserError::Password(e.to_string()))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// What a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRule {
    /// Every interface of every exporter.
    All,
    /// Interfaces of one exporter (address or name): all, one, or those whose
    /// description matches a regular expression.
    Exporter {
        exporter: String,
        ifindex: Option<i64>,
        description_regex: Option<String>,
    },
    /// Every member of an interface group.
    Group(String),
}

impl std::fmt::Display for GrantRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantRule::All => write!(f, "all interfaces"),
            GrantRule::Exporter {
                exporter,
                ifindex,
                description_regex,
            } => {
                match ifindex {
                    Some(i) => write!(f, "exporter {exporter} interface {i}")?,
                    None => write!(f, "exporter {exporter}, every interface")?,
                }
                if let Some(re) = description_regex {
                    write!(f, " whose description matches /{re}/")?;
                }
                Ok(())
            }
            GrantRule::Group(g) => write!(f, "interface group {g}"),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: String,
    pub last_login: Option<String>,
    /// (grant id, what it covers)
    pub grants: Vec<(i32, String)>,
}

pub async fn audit(
    client: &Client,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), UserError> {
    client
        .execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
            &[&actor, &action, &target, &detail],
        )
        .await?;
    Ok(())
}

async fn user_id(client: &Client, name: &str) -> Result<i32, UserError> {
    client
        .query_opt("SELECT id FROM users WHERE name = $1", &[&name])
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| UserError::NotFound(name.to_string()))
}

pub async fn add(
    client: &Client,
    actor: &str,
    name: &str,
    role: Role,
    password: &str,
) -> Result<(), UserError> {
    validate_name(name)?;
    let hash = hash_password(password)?;
    let inserted = client
        .execute(
            "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[&name, &role.as_str(), &hash],
        )
        .await?;
    if inserted == 0 {
        return Err(UserError::Exists(name.to_string()));
    }
    audit(client, actor, "user.add", name, role.as_str()).await
}

pub async fn set_password(
    client: &Client,
    actor: &str,
    name: &str,
    password: &str,
) -> Result<(), UserError> {
    let hash = hash_password(password)?;
    let n = client
        .execute(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE name = $1",
            &[&name, &hash],
        )
        .await?;
    if n == 0 {
        return Err(UserError::NotFound(name.to_string()));
    }
    end_sessions(client, name).await?;
    audit(client, actor, "user.passwd", name, "").await
}

pub async fn set_disabled(
    client: &Client,
    actor: &str,
    name: &str,
    disabled: bool,
) -> Result<(), UserError> {
    let n = client
        .execute(
            "UPDATE users SET disabled = $2, updated_at = now() WHERE name = $1",
            &[&name, &disabled],
        )
        .await?;
    if n == 0 {
        return Err(UserError::NotFound(name.to_string()));
    }
    // Disabled, or enabled again: either way no old session carries over.
    end_sessions(client, name).await?;
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    audit(client, actor, action, name, "").await
}

/// Change a user's role. The last active admin cannot be made a viewer (nobody could
/// manage users any more).
pub async fn set_role(
    client: &Client,
    actor: &str,
    name: &str,
    role: Role,
) -> Result<(), UserError> {
    if role == Role::Viewer {
        let other_admins: i64 = client
            .query_one(
                "SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled AND name <> $1",
                &[&name],
            )
            .await?
            .get(0);
        if other_admins == 0 {
            return Err(UserError::LastAdmin(name.to_string()));
        }
    }
    let n = client
        .execute(
            "UPDATE users SET role = $2, updated_at = now() WHERE name = $1",
            &[&name, &role.as_str()],
        )
        .await?;
    if n == 0 {
        return Err(UserError::NotFound(name.to_string()));
    }
    end_sessions(client, name).await?;
    audit(client, actor, "user.role", name, role.as_str()).await
}

/// End every web session of a user (after a password change or a disable).
async fn end_sessions(client: &Client, name: &str) -> Result<(), UserError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('web_sessions') IS NOT NULL", &[])
        .await?
        .get(0);
    if exists {
        client
            .execute(
                "DELETE FROM web_sessions WHERE user_id = (SELECT id FROM users WHERE name = $1)",
                &[&name],
            )
            .await?;
    }
    Ok(())
}

/// An API token's name and dates, never the token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub user: String,
    pub name: String,
    pub created_at: String,
    pub last_used: Option<String>,
}

pub async fn tokens(client: &Client) -> Result<Vec<TokenInfo>, UserError> {
    Ok(client
        .query(
            "SELECT u.name, t.name, to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
                    to_char(t.last_used AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
             FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY u.name, t.name",
            &[],
        )
        .await?
        .iter()
        .map(|r| TokenInfo {
            user: r.get(0),
            name: r.get(1),
            created_at: r.get(2),
            last_used: r.get(3),
        })
        .collect())
}

pub async fn revoke_token(
    client: &Client,
    actor: &str,
    user: &str,
    name: &str,
) -> Result<(), UserError> {
    let n = client
        .execute(
            "DELETE FROM api_tokens WHERE name = $2 AND user_id = (SELECT id FROM users WHERE name = $1)",
            &[&user, &name],
        )
        .await?;
    if n == 0 {
        return Err(UserError::NotFound(format!("{user} token {name}")));
    }
    audit(client, actor, "token.revoke", user, name).await
}

pub async fn grant(
    client: &Client,
    actor: &str,
    name: &str,
    rule: &GrantRule,
) -> Result<i32, UserError> {
    let uid = user_id(client, name).await?;
    let (exporter, ifindex, regex, group) = match rule {
        GrantRule::All => (None, None, None, None),
        GrantRule::Exporter {
            exporter,
            ifindex,
            description_regex,
        } => (
            Some(exporter.clone()),
            *ifindex,
            description_regex.clone(),
            None,
        ),
        GrantRule::Group(g) => {
            let id: i32 = client
                .query_opt("SELECT id FROM interface_groups WHERE name = $1", &[g])
                .await?
                .map(|r| r.get(0))
                .ok_or_else(|| UserError::UnknownGroup(g.clone()))?;
            (None, None, None, Some(id))
        }
    };
    if let Some(re) = &regex {
        // PostgreSQL evaluates the pattern, so PostgreSQL checks it.
        if let Err(e) = client.query_one("SELECT '' ~ $1", &[re]).await {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            return Err(UserError::InvalidRegex(re.clone(), msg));
        }
    }
    let id: i32 = client
        .query_one(
            "INSERT INTO user_grants (user_id, exporter, ifindex, description_regex, group_id)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&uid, &exporter, &ifindex, &regex, &group],
        )
        .await?
        .get(0);
    audit(client, actor, "grant.add", name, &format!("#{id}: {rule}")).await?;
    Ok(id)
}

pub async fn revoke(client: &Client, actor: &str, name: &str, id: i32) -> Result<(), UserError> {
    let uid = user_id(client, name).await?;
    let n = client
        .execute(
            "DELETE FROM user_grants WHERE id = $1 AND user_id = $2",
            &[&id, &uid],
        )
        .await?;
    if n == 0 {
        return Err(UserError::NoSuchGrant {
            user: name.to_string(),
            id,
        });
    }
    audit(client, actor, "grant.revoke", name, &format!("#{id}")).await
}

fn describe_grant(
    exporter: Option<String>,
    ifindex: Option<i64>,
    description_regex: Option<String>,
    group: Option<String>,
) -> String {
    match (exporter, group) {
        (_, Some(g)) => GrantRule::Group(g).to_string(),
        (Some(exporter), None) => GrantRule::Exporter {
            exporter,
            ifindex,
            description_regex,
        }
        .to_string(),
        (None, None) => match description_regex {
            Some(re) => format!("every interface whose description matches /{re}/"),
            None => GrantRule::All.to_string(),
        },
    }
}

pub async fn list(client: &Client) -> Result<Vec<UserInfo>, UserError> {
    let rows = client
        .query(
            "SELECT id, name, role, disabled, to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SSOF'),
                    to_char(last_login, 'YYYY-MM-DD\"T\"HH24:MI:SSOF')
             FROM users ORDER BY name",
            &[],
        )
        .await?;
    let grants = client
        .query(
            "SELECT g.user_id, g.id, g.exporter, g.ifindex, g.description_regex, ig.name
             FROM user_grants g LEFT JOIN interface_groups ig ON ig.id = g.group_id
             ORDER BY g.id",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: i32 = r.get(0);
        let role: String = r.get(2);
        out.push(UserInfo {
            name: r.get(1),
            role: role.parse()?,
            disabled: r.get(3),
            created_at: r.get(4),
            last_login: r.get(5),
            grants: grants
                .iter()
                .filter(|g| g.get::<_, i32>(0) == id)
                .map(|g| {
                    (
                        g.get(1),
                        describe_grant(g.get(2), g.get(3), g.get(4), g.get(5)),
                    )
                })
                .collect(),
        });
    }
    Ok(out)
}

/// Create an interface group (several interfaces shown as one link or customer).
pub async fn group_add(
    client: &Client,
    actor: &str,
    name: &str,
    description: &str,
) -> Result<(), UserError> {
    if name.trim().is_empty() || name.len() > 64 {
        return Err(UserError::UnknownGroup(name.to_string()));
    }
    client
        .execute(
            "INSERT INTO interface_groups (name, description) VALUES ($1, NULLIF($2, ''))
             ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description",
            &[&name.trim(), &description],
        )
        .await?;
    audit(client, actor, "group.add", name, description).await
}

/// Add an interface (exporter address or name, ifIndex) to a group.
pub async fn group_member_add(
    client: &Client,
    actor: &str,
    group: &str,
    exporter: &str,
    ifindex: i64,
) -> Result<(), UserError> {
    let known: i64 = client
        .query_one(
            "SELECT count(*) FROM interface_groups WHERE name = $1",
            &[&group],
        )
        .await?
        .get(0);
    if known == 0 {
        return Err(UserError::UnknownGroup(group.to_string()));
    }
    let interface: i64 = client
        .query_one(
            "SELECT count(*) FROM interfaces i JOIN exporters e ON e.id = i.exporter_id
             WHERE (e.name = $1 OR host(e.address) = $1) AND i.ifindex = $2",
            &[&exporter, &ifindex],
        )
        .await?
        .get(0);
    if interface == 0 {
        return Err(UserError::NoInterface(format!("{exporter}:{ifindex}")));
    }
    let n = client
        .execute(
            "INSERT INTO interface_group_members (group_id, exporter_id, ifindex)
             SELECT g.id, i.exporter_id, i.ifindex
             FROM interface_groups g, interfaces i JOIN exporters e ON e.id = i.exporter_id
             WHERE g.name = $1 AND (e.name = $2 OR host(e.address) = $2) AND i.ifindex = $3
             ON CONFLICT DO NOTHING",
            &[&group, &exporter, &ifindex],
        )
        .await?;
    if n > 0 {
        audit(
            client,
            actor,
            "group.member",
            group,
            &format!("{exporter}:{ifindex}"),
        )
        .await?;
    }
    Ok(())
}

/// Create the first admin (`admin`) with a generated password if there is no admin
/// yet; returns the password when one was created.
pub async fn ensure_first_admin(client: &Client, actor: &str) -> Result<Option<String>, UserError> {
    let admins: i64 = client
        .query_one("SELECT count(*) FROM users WHERE role = 'admin'", &[])
        .await?
        .get(0);
    if admins > 0 {
        return Ok(None);
    }
    let password = generate_password()?;
    add(client, actor, "admin", Role::Admin, &password).await?;
    Ok(Some(password))
}

/// Who is acting, for the audit log of command-line changes.
pub fn cli_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "unknown".into())
        });
    format!("cli:{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery!"));
        assert!(!verify_password("not a hash", "x"));
        assert!(hash_password("short").is_err());
        let p = generate_password().unwrap();
        assert_eq!(p.len(), 20);
        assert_ne!(p, generate_password().unwrap());
    }

    #[test]
    fn user_names_are_checked() {
        for good in ["admin", "noc-1", "a.b_c"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "Admin", "-x", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
