//! Who is asking: password logins with throttling per user and per address, server-side
//! sessions in PostgreSQL (only token hashes stored), CSRF tokens bound to the session,
//! API tokens for scripts, and the audit log of logins.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::users::Role;

/// Failed logins allowed per user name, and per client address, within [`WINDOW`].
pub const USER_LIMIT: usize = 5;
pub const ADDRESS_LIMIT: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// A session ends after this long without a request, and at the latest after
/// [`SESSION_MAX`].
pub const SESSION_IDLE: &str = "12 hours";
pub const SESSION_MAX: &str = "7 days";
pub const SESSION_COOKIE: &str = "fs_session";
pub const LOGIN_CSRF_COOKIE: &str = "fs_login_csrf";

/// A logged-in user (by session or API token).
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: i32,
    pub name: String,
    pub role: Role,
    /// The session's CSRF token (empty for API tokens, which send no cookies).
    pub csrf: String,
}

pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    // getrandom only fails without a kernel source of randomness; a panic beats a
    // predictable session token.
    #[allow(clippy::expect_used)]
    getrandom::getrandom(&mut b).expect("the kernel's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time comparison for tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Failed-login bookkeeping, in memory: a restart forgets it, which only helps the
/// operator who locked himself out.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    fn prune(q: &mut VecDeque<Instant>, now: Instant) {
        while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
            q.pop_front();
        }
    }

    /// How long to wait before `user` may try again from `address` (None: go ahead).
    pub fn wait(&self, user: &str, address: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut worst = None;
        for (key, limit) in [
            (format!("user:{user}"), USER_LIMIT),
            (format!("addr:{address}"), ADDRESS_LIMIT),
        ] {
            if let Some(q) = map.get_mut(&key) {
                Self::prune(q, now);
                if q.len() >= limit {
                    let oldest = q.front().copied().unwrap_or(now);
                    let wait = WINDOW.saturating_sub(now.duration_since(oldest));
                    worst = Some(worst.map_or(wait, |w: Duration| w.max(wait)));
                }
            }
        }
        worst
    }

    pub fn failed(&self, user: &str, address: &str) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for key in [format!("user:{user}"), format!("addr:{address}")] {
            let q = map.entry(key).or_default();
            Self::prune(q, now);
            q.push_back(now);
        }
        // Bounded: addresses of a scan cannot grow this without limit.
        if map.len() > 100_000 {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
    }

    pub fn succeeded(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&format!("user:{user}"));
    }

    /// A login that was counted up front succeeded: clear the user's failures and
    /// take this attempt back from the address.
    pub fn forgive(&self, user: &str, address: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&format!("user:{user}"));
        if let Some(q) = map.get_mut(&format!("addr:{address}")) {
            q.pop_back();
        }
    }
}

/// Check a user's password; `Some` with the user when it is right and the user active.
pub async fn check_password(
    client: &Client,
    name: &str,
    password: &str,
) -> anyhow::Result<Option<Identity>> {
    let row = client
        .query_opt(
            "SELECT id, role, password_hash FROM users WHERE name = $1 AND NOT disabled",
            &[&name],
        )
        .await?;
    // Without such a user, verify against a dummy hash anyway, so the answer takes as
    // long as for a real user.
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$8Qj1cpBBJ8JjD2ZXWv0zMvQ3bLZcE1YhY3xM6cI6kGk";
    let (hash, found) = match &row {
        Some(r) => (r.get::<_, String>(2), true),
        None => (DUMMY.to_string(), false),
    };
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || crate::users::verify_password(&hash, &password))
        .await?;
    match row {
        Some(r) if ok && found => {
            let role: String = r.get(1);
            Ok(Some(Identity {
                user_id: r.get(0),
                name: name.to_string(),
                role: role.parse()?,
                csrf: String::new(),
            }))
        }
        _ => Ok(None),
    }
}

/// Start a session; returns the cookie token and fills in the CSRF token.
pub async fn create_session(client: &Client, who: &mut Identity) -> anyhow::Result<String> {
    let token = random_token();
    who.csrf = random_token();
    client
        .execute("DELETE FROM web_sessions WHERE expires_at < now()", &[])
        .await?;
    client
        .execute(
            &format!(
                "INSERT INTO web_sessions (token_hash, user_id, csrf_token, expires_at)
                 VALUES ($1, $2, $3, now() + interval '{SESSION_IDLE}')"
            ),
            &[&sha256_hex(&token), &who.user_id, &who.csrf],
        )
        .await?;
    client
        .execute(
            "UPDATE users SET last_login = now() WHERE id = $1",
            &[&who.user_id],
        )
        .await?;
    Ok(token)
}

/// The session behind a cookie token, if it is valid; its idle timer restarts.
pub async fn session(client: &Client, token: &str) -> anyhow::Result<Option<Identity>> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE web_sessions s
                 SET last_seen = now(),
                     expires_at = least(now() + interval '{SESSION_IDLE}', s.created_at + interval '{SESSION_MAX}')
                 FROM users u
                 WHERE s.token_hash = $1 AND u.id = s.user_id AND NOT u.disabled
                   AND s.expires_at > now()
                 RETURNING u.id, u.name, u.role, s.csrf_token"
            ),
            &[&sha256_hex(token)],
        )
        .await?;
    row.map(|r| identity(&r, r.get(3))).transpose()
}

/// An identity from a row of (id, name, role).
fn identity(r: &tokio_postgres::Row, csrf: String) -> anyhow::Result<Identity> {
    let role: String = r.get(2);
    Ok(Identity {
        user_id: r.get(0),
        name: r.get(1),
        role: role.parse()?,
        csrf,
    })
}

pub async fn end_session(client: &Client, token: &str) -> anyhow::Result<()> {
    client
        .execute(
            "DELETE FROM web_sessions WHERE token_hash = $1",
            &[&sha256_hex(token)],
        )
        .await?;
    Ok(())
}

/// The user behind an API token (`Authorization: Bearer ...`).
pub async fn api_token(client: &Client, token: &str) -> anyhow::Result<Option<Identity>> {
    let row = client
        .query_opt(
            "UPDATE api_tokens t SET last_used = now() FROM users u
             WHERE t.token_hash = $1 AND u.id = t.user_id AND NOT u.disabled
             RETURNING u.id, u.name, u.role",
            &[&sha256_hex(token)],
        )
        .await?;
    row.map(|r| identity(&r, String::new())).transpose()
}

/// Create an API token for a user; returns the token (shown once).
pub async fn create_api_token(
    client: &Client,
    actor: &str,
    user: &str,
    name: &str,
) -> anyhow::Result<String> {
    let token = format!("fst_{}", random_token());
    let n = client
        .execute(
            "INSERT INTO api_tokens (user_id, name, token_hash)
             SELECT id, $2, $3 FROM users WHERE name = $1",
            &[&user, &name, &sha256_hex(&token)],
        )
        .await?;
    anyhow::ensure!(n == 1, "no user {user:?}");
    crate::users::audit(client, actor, "token.add", user, name).await?;
    Ok(token)
}

/// The value of a cookie in a `Cookie` header.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_counts_per_user_and_per_address() {
        let t = Throttle::default();
        for _ in 0..USER_LIMIT {
            assert!(t.wait("ops", "192.0.2.1").is_none());
            t.failed("ops", "192.0.2.1");
        }
        assert!(t.wait("ops", "192.0.2.9").is_some(), "per user");
        assert!(t.wait("other", "192.0.2.9").is_none());
        t.succeeded("ops");
        assert!(t.wait("ops", "192.0.2.9").is_none());
        for i in 0..ADDRESS_LIMIT {
            t.failed(&format!("u{i}"), "198.51.100.7");
        }
        assert!(t.wait("fresh", "198.51.100.7").is_some(), "per address");
    }

    #[test]
    fn tokens_compare_in_constant_time_and_hash() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("", ""));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(random_token(), random_token());
    }
}
