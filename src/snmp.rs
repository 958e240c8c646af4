//! SNMP polling of exporters (v2c and v3 USM): the router's own sysName and interface
//! names (ifName, ifDescr, ifAlias), speeds (ifHighSpeed, else ifSpeed), operational
//! status and 64-bit octet counters (ifHCInOctets/ifHCOutOctets), stored per source so
//! `names.precedence` picks what is shown, and counter deltas stored for the interface
//! graphs. A failed poll changes no name: the last good poll's stay, and `status` warns.
//!
//! Credentials come from `[snmp.NAME]` tables in the secrets file, never from the
//! configuration, and are never printed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use snmp2::{Oid, SyncSession, Value};

use crate::config::{Config, SnmpTarget};

const SYS_UPTIME: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
const SYS_NAME: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 5, 0];
const IF_DESCR: &[u64] = &[1, 3, 6, 1, 2, 1, 2, 2, 1, 2];
const IF_SPEED: &[u64] = &[1, 3, 6, 1, 2, 1, 2, 2, 1, 5];
const IF_OPER_STATUS: &[u64] = &[1, 3, 6, 1, 2, 1, 2, 2, 1, 8];
const IF_NAME: &[u64] = &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 1];
const IF_HC_IN_OCTETS: &[u64] = &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6];
const IF_HC_OUT_OCTETS: &[u64] = &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 10];
const IF_HIGH_SPEED: &[u64] = &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 15];
const IF_ALIAS: &[u64] = &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 18];

/// Rows asked for per GETBULK.
const BULK_REPETITIONS: u32 = 25;
/// Interfaces read per agent at most: a table walk must end even if an agent loops.
const MAX_INTERFACES: usize = 100_000;
/// Exporters polled at the same time.
const PARALLEL_POLLS: usize = 16;

/// How to authenticate to an agent.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    V2c {
        community: String,
    },
    V3 {
        user: String,
        auth: snmp2::v3::AuthProtocol,
        auth_password: String,
        privacy: Option<(snmp2::v3::Cipher, String)>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::V2c { .. } => f.write_str("v2c { community: *** }"),
            Credentials::V3 {
                user,
                auth,
                privacy,
                ..
            } => write!(
                f,
                "v3 {{ user: {user:?}, auth: {auth:?}, privacy: {:?}, passwords: *** }}",
                privacy.as_ref().map(|p| p.0)
            ),
        }
    }
}

/// Why an agent could not be polled. Messages never contain a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnmpError {
    #[error("no answer from {agent} within {timeout_secs} s ({attempts} attempt(s)); check the address, port, ACL and credentials")]
    Timeout {
        agent: SocketAddr,
        timeout_secs: u64,
        attempts: u32,
    },
    #[error("{agent} refused the v3 credentials: {reason}")]
    Authentication { agent: SocketAddr, reason: String },
    #[error("{agent}: {reason}")]
    Protocol { agent: SocketAddr, reason: String },
    #[error("{agent}: cannot open a UDP socket: {reason}")]
    Socket { agent: SocketAddr, reason: String },
}

/// One interface as the agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceInfo {
    pub name: Option<String>,
    pub descr: Option<String>,
    pub alias: Option<String>,
    pub speed_bps: Option<u64>,
    pub oper_status: Option<i64>,
    pub in_octets: Option<u64>,
    pub out_octets: Option<u64>,
}

/// What one poll read from an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentData {
    pub sys_name: Option<String>,
    /// sysUpTime in hundredths of a second (counter discontinuities after a reboot).
    pub sys_uptime: Option<u32>,
    pub interfaces: BTreeMap<u32, InterfaceInfo>,
}

/// Read the credentials named `name` from the `[snmp.NAME]` table of `file`.
pub fn load_credentials(file: &Path, name: &str) -> anyhow::Result<Credentials> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the SNMP credentials in {}", file.display()))?;
    // Parse errors could quote a secret: say only where.
    let table: toml::Table = text
        .parse()
        .map_err(|_| anyhow::anyhow!("{} is not valid TOML", file.display()))?;
    let entry = table
        .get("snmp")
        .and_then(|s| s.get(name))
        .and_then(|e| e.as_table())
        .with_context(|| format!("{} has no [snmp.{name}] table", file.display()))?;
    parse_credentials(entry).with_context(|| format!("[snmp.{name}] in {}", file.display()))
}

fn parse_credentials(entry: &toml::Table) -> anyhow::Result<Credentials> {
    let text = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_string);
    for key in entry.keys() {
        anyhow::ensure!(
            [
                "version",
                "community",
                "user",
                "auth_protocol",
                "auth_password",
                "priv_protocol",
                "priv_password"
            ]
            .contains(&key.as_str()),
            "unknown key {key:?}"
        );
    }
    match text("version").as_deref() {
        Some("2c") => Ok(Credentials::V2c {
            community: text("community").context("version 2c needs community")?,
        }),
        Some("3") => {
            let user = text("user").context("version 3 needs user")?;
            let auth = match text("auth_protocol").as_deref().unwrap_or("sha") {
                "md5" => snmp2::v3::AuthProtocol::Md5,
                "sha" | "sha1" => snmp2::v3::AuthProtocol::Sha1,
                "sha224" => snmp2::v3::AuthProtocol::Sha224,
                "sha256" => snmp2::v3::AuthProtocol::Sha256,
                "sha384" => snmp2::v3::AuthProtocol::Sha384,
                "sha512" => snmp2::v3::AuthProtocol::Sha512,
                other => anyhow::bail!(
                    "auth_protocol {other:?}: expected md5, sha, sha224, sha256, sha384 or sha512"
                ),
            };
            let auth_password = text("auth_password").context("version 3 needs auth_password")?;
            anyhow::ensure!(
                auth_password.len() >= 8,
                "auth_password is shorter than the 8 characters SNMPv3 requires"
            );
            let privacy = match text("priv_protocol") {
                None => None,
                Some(p) => {
                    let cipher = match p.as_str() {
                        "des" => snmp2::v3::Cipher::Des,
                        "aes" | "aes128" => snmp2::v3::Cipher::Aes128,
                        "aes192" => snmp2::v3::Cipher::Aes192,
                        "aes256" => snmp2::v3::Cipher::Aes256,
                        other => anyhow::bail!(
                            "priv_protocol {other:?}: expected des, aes, aes192 or aes256"
                        ),
                    };
                    let password =
                        text("priv_password").context("priv_protocol needs priv_password")?;
                    anyhow::ensure!(
                        password.len() >= 8,
                        "priv_password is shorter than the 8 characters SNMPv3 requires"
                    );
                    Some((cipher, password))
                }
            };
            Ok(Credentials::V3 {
                user,
                auth,
                auth_password,
                privacy,
            })
        }
        Some(other) => anyhow::bail!("version {other:?}: expected \"2c\" or \"3\""),
        None => anyhow::bail!("version is missing: \"2c\" or \"3\""),
    }
}

fn oid(parts: &[u64]) -> Oid<'static> {
    // The constants above are valid OIDs; an invalid one is a programming error that
    // every test would show.
    Oid::from(parts).unwrap_or_else(|_| Oid::from(&[1, 3]).expect("1.3 is an OID"))
}

fn components(oid: &Oid<'_>) -> Option<Vec<u64>> {
    oid.iter().map(|i| i.collect())
}

struct Session {
    inner: SyncSession,
    agent: SocketAddr,
    timeout: Duration,
    retries: u32,
}

impl Session {
    fn open(
        agent: SocketAddr,
        credentials: &Credentials,
        timeout: Duration,
        retries: u32,
    ) -> Result<Session, SnmpError> {
        let socket_error = |e: std::io::Error| SnmpError::Socket {
            agent,
            reason: e.to_string(),
        };
        let inner = match credentials {
            Credentials::V2c { community } => {
                SyncSession::new_v2c(agent, community.as_bytes(), Some(timeout), 1)
                    .map_err(socket_error)?
            }
            Credentials::V3 {
                user,
                auth,
                auth_password,
                privacy,
            } => {
                let level = match privacy {
                    Some((cipher, password)) => snmp2::v3::Auth::AuthPriv {
                        cipher: *cipher,
                        privacy_password: password.as_bytes().to_vec(),
                    },
                    None => snmp2::v3::Auth::AuthNoPriv,
                };
                let security = snmp2::v3::Security::new(user.as_bytes(), auth_password.as_bytes())
                    .with_auth_protocol(*auth)
                    .with_auth(level);
                SyncSession::new_v3(agent, Some(timeout), 1, security).map_err(socket_error)?
            }
        };
        let mut session = Session {
            inner,
            agent,
            timeout,
            retries,
        };
        if matches!(credentials, Credentials::V3 { .. }) {
            session.with_retries(|s| s.init().map(|_| ()))?;
        }
        Ok(session)
    }

    fn error(&self, e: snmp2::Error, attempts: u32) -> SnmpError {
        match e {
            snmp2::Error::Receive | snmp2::Error::Send => SnmpError::Timeout {
                agent: self.agent,
                timeout_secs: self.timeout.as_secs(),
                attempts,
            },
            snmp2::Error::AuthFailure(kind) => SnmpError::Authentication {
                agent: self.agent,
                reason: format!("{kind:?}"),
            },
            other => SnmpError::Protocol {
                agent: self.agent,
                reason: other.to_string(),
            },
        }
    }

    /// Run `request`, again after a timeout (up to `retries` times) and after the v3
    /// engine's boots/time were updated (the agent rebooted or this is the first
    /// request).
    fn with_retries<T>(
        &mut self,
        mut request: impl FnMut(&mut SyncSession) -> Result<T, snmp2::Error>,
    ) -> Result<T, SnmpError> {
        let mut attempts = 0;
        let mut auth_updates = 0;
        let mut stale = 0;
        loop {
            attempts += 1;
            match request(&mut self.inner) {
                Ok(v) => return Ok(v),
                Err(snmp2::Error::AuthUpdated) if auth_updates < 3 => {
                    auth_updates += 1;
                    attempts -= 1;
                }
                Err(snmp2::Error::Receive) if attempts <= self.retries => {}
                // A late answer to an earlier, timed-out request was read instead of
                // this one's: read again (bounded); this one's answer is on its way.
                Err(snmp2::Error::RequestIdMismatch) if stale < 8 => {
                    stale += 1;
                    attempts -= 1;
                }
                Err(e) => return Err(self.error(e, attempts)),
            }
        }
    }

    /// sysName and sysUpTime.
    fn system(&mut self) -> Result<(Option<String>, Option<u32>), SnmpError> {
        let (name_oid, uptime_oid) = (oid(SYS_NAME), oid(SYS_UPTIME));
        self.with_retries(|s| {
            let pdu = s.get_many(&[&name_oid, &uptime_oid])?;
            let mut name = None;
            let mut uptime = None;
            for (o, v) in pdu.varbinds {
                let parts = components(&o);
                match (parts.as_deref(), v) {
                    (Some(SYS_NAME), Value::OctetString(b)) => {
                        name = Some(String::from_utf8_lossy(b).trim().to_string())
                    }
                    (Some(SYS_UPTIME), Value::Timeticks(t)) => uptime = Some(t),
                    _ => {}
                }
            }
            Ok((name.filter(|n| !n.is_empty()), uptime))
        })
    }

    /// Every (index, value) of one table column, by GETBULK from the column's root.
    fn column(
        &mut self,
        root: &[u64],
        mut each: impl FnMut(u32, &Value<'_>),
    ) -> Result<(), SnmpError> {
        let mut next = root.to_vec();
        let mut seen = 0usize;
        loop {
            let start = oid(&next);
            let last = self.with_retries(|s| {
                let pdu = s.getbulk(&[&start], 0, BULK_REPETITIONS)?;
                let mut last: Option<Vec<u64>> = None;
                let mut done = false;
                for (o, v) in pdu.varbinds {
                    // An agent may answer with more rows than asked: the bound is on
                    // rows, whatever the datagrams hold.
                    seen += 1;
                    if seen > MAX_INTERFACES {
                        done = true;
                        break;
                    }
                    let Some(parts) = components(&o) else {
                        done = true;
                        break;
                    };
                    let inside = parts.len() == root.len() + 1 && parts.starts_with(root);
                    if !inside || matches!(v, Value::EndOfMibView) {
                        done = true;
                        break;
                    }
                    if let Some(index) = parts.last().and_then(|i| u32::try_from(*i).ok()) {
                        each(index, &v);
                    }
                    last = Some(parts);
                }
                Ok(if done { None } else { last })
            })?;
            match last {
                // The agent must move forward; one that does not would loop forever.
                Some(l) if l > next => next = l,
                _ => return Ok(()),
            }
        }
    }
}

fn text_of(v: &Value<'_>) -> Option<String> {
    match v {
        Value::OctetString(b) => Some(String::from_utf8_lossy(b).trim().to_string()),
        _ => None,
    }
}

fn number_of(v: &Value<'_>) -> Option<u64> {
    match *v {
        Value::Integer(i) => u64::try_from(i).ok(),
        Value::Counter32(c) | Value::Unsigned32(c) | Value::Timeticks(c) => Some(u64::from(c)),
        Value::Counter64(c) => Some(c),
        _ => None,
    }
}

/// Walk one agent (blocking: run it off the async runtime).
pub fn walk(
    agent: SocketAddr,
    credentials: &Credentials,
    timeout: Duration,
    retries: u32,
) -> Result<AgentData, SnmpError> {
    let mut session = Session::open(agent, credentials, timeout, retries)?;
    let (sys_name, sys_uptime) = session.system()?;
    let mut interfaces: BTreeMap<u32, InterfaceInfo> = BTreeMap::new();
    let mut if_speed: BTreeMap<u32, u64> = BTreeMap::new();
    session.column(IF_DESCR, |i, v| {
        interfaces.entry(i).or_default().descr = text_of(v);
    })?;
    // Interfaces are the ifTable's; the ifXTable columns only add to them.
    let mut set = |root: &[u64], f: fn(&mut InterfaceInfo, &Value<'_>)| {
        session.column(root, |i, v| {
            if let Some(row) = interfaces.get_mut(&i) {
                f(row, v);
            }
        })
    };
    set(IF_NAME, |r, v| r.name = text_of(v))?;
    set(IF_ALIAS, |r, v| r.alias = text_of(v))?;
    set(IF_OPER_STATUS, |r, v| {
        r.oper_status = number_of(v).and_then(|n| i64::try_from(n).ok())
    })?;
    set(IF_HIGH_SPEED, |r, v| {
        r.speed_bps = number_of(v).filter(|s| *s > 0).map(|s| s * 1_000_000)
    })?;
    set(IF_HC_IN_OCTETS, |r, v| r.in_octets = number_of(v))?;
    set(IF_HC_OUT_OCTETS, |r, v| r.out_octets = number_of(v))?;
    session.column(IF_SPEED, |i, v| {
        if let Some(s) = number_of(v) {
            if_speed.insert(i, s);
        }
    })?;
    for (i, row) in interfaces.iter_mut() {
        // ifSpeed saturates at 2^32-1 ("see ifHighSpeed").
        if row.speed_bps.is_none() {
            row.speed_bps = if_speed
                .get(i)
                .copied()
                .filter(|s| *s > 0 && *s < u64::from(u32::MAX));
        }
    }
    Ok(AgentData {
        sys_name,
        sys_uptime,
        interfaces,
    })
}

/// One exporter's poll, as `flowstage-collector poll` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PollResult {
    pub exporter: IpAddr,
    pub agent: SocketAddr,
    pub ok: bool,
    pub sys_name: Option<String>,
    pub interfaces: usize,
    /// Interfaces with counter deltas stored this time.
    pub counters: usize,
    pub error: Option<String>,
    /// The last good poll, whose names are kept after a failure.
    pub last_success: Option<String>,
}

/// What one `poll` run did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PollSummary {
    pub polls: Vec<PollResult>,
    /// Exporters whose reverse DNS name was looked up.
    pub dns_lookups: usize,
    /// Shown names that changed.
    pub names_changed: i32,
}

impl PollSummary {
    pub fn failures(&self) -> usize {
        self.polls.iter().filter(|p| !p.ok).count()
    }
}

/// The target covering `address`, first match wins.
pub fn target_for(targets: &[SnmpTarget], address: IpAddr) -> Option<&SnmpTarget> {
    targets
        .iter()
        .find(|t| t.exporters.iter().any(|n| n.contains(&address)))
}

/// Counter deltas since the previous poll. `None` where there is no usable previous
/// value: first poll, or a 64-bit counter that went backwards (a reset: it would take
/// 2^64 bytes to wrap), or moved more than twice the line rate could carry.
fn delta(prev: Option<u64>, now: u64, secs: f64, speed_bps: Option<u64>) -> Option<i64> {
    let d = now.checked_sub(prev?)?;
    let plausible = match speed_bps {
        Some(s) if s > 0 => (d as f64) * 8.0 <= (s as f64) * secs * 2.0 + 1e6,
        _ => true,
    };
    plausible.then(|| i64::try_from(d).ok()).flatten()
}

/// Poll every exporter the `[[snmp.target]]`s cover (those in the database and single
/// addresses named in a target), store what was read, look up reverse DNS names when
/// enabled, and re-pick the shown names.
pub async fn poll(config: &Config, now: DateTime<Utc>) -> anyhow::Result<PollSummary> {
    let mut client = crate::db::connect(&config.database_url).await?;
    crate::db::migrate(&mut client).await?;
    for t in &config.snmp.targets {
        if let [net] = t.exporters.as_slice() {
            if net.prefix_len() == net.max_prefix_len() {
                client
                    .execute(
                        "INSERT INTO exporters (address) VALUES ($1) ON CONFLICT (address) DO NOTHING",
                        &[&net.addr()],
                    )
                    .await?;
            }
        }
    }
    let exporters: Vec<(i32, IpAddr)> = client
        .query("SELECT id, address FROM exporters ORDER BY address", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut jobs = Vec::new();
    let mut credentials: BTreeMap<String, Result<Credentials, String>> = BTreeMap::new();
    for (id, address) in &exporters {
        let Some(target) = target_for(&config.snmp.targets, *address) else {
            continue;
        };
        let creds = credentials
            .entry(target.credentials.clone())
            .or_insert_with(|| {
                load_credentials(&config.snmp.secrets_file, &target.credentials)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone();
        let agent = SocketAddr::new(target.agent.unwrap_or(*address), target.port);
        jobs.push((*id, *address, agent, creds));
    }
    let timeout = Duration::from_secs(config.snmp.timeout_secs);
    let retries = config.snmp.retries;
    let mut summary = PollSummary::default();
    for chunk in jobs.chunks(PARALLEL_POLLS) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|(id, address, agent, creds)| {
                let (id, address, agent, creds) = (*id, *address, *agent, creds.clone());
                tokio::task::spawn_blocking(move || {
                    let result = match creds {
                        Ok(c) => walk(agent, &c, timeout, retries).map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    (id, address, agent, result)
                })
            })
            .collect();
        for h in handles {
            let (id, address, agent, result) = h.await.context("an SNMP poll thread failed")?;
            let max_gap = 3.0 * config.snmp.interval_secs as f64;
            let r = store(&mut client, id, address, agent, result, now, max_gap).await?;
            summary.polls.push(r);
        }
    }
    if config.names.reverse_dns {
        summary.dns_lookups = reverse_dns(&client, &exporters).await?;
    }
    summary.names_changed = client
        .query_one(
            "SELECT flowstage_apply_names($1)",
            &[&config.names.precedence],
        )
        .await?
        .get(0);
    Ok(summary)
}

async fn store(
    client: &mut tokio_postgres::Client,
    exporter_id: i32,
    exporter: IpAddr,
    agent: SocketAddr,
    result: Result<AgentData, String>,
    now: DateTime<Utc>,
    max_gap_secs: f64,
) -> anyhow::Result<PollResult> {
    let tx = client.transaction().await?;
    // Locked: a manual poll overlapping the timer's must not compute a second delta
    // from the same baseline.
    let previous = tx
        .query_opt(
            "SELECT succeeded_at, counters::text, sys_uptime FROM snmp_polls WHERE exporter_id = $1 FOR UPDATE",
            &[&exporter_id],
        )
        .await?;
    let last_success: Option<DateTime<Utc>> = previous.as_ref().and_then(|r| r.get(0));
    let data = match result {
        Err(error) => {
            tx.execute(
                "INSERT INTO snmp_polls (exporter_id, attempted_at, error) VALUES ($1, $2, $3)
                 ON CONFLICT (exporter_id) DO UPDATE SET attempted_at = $2, error = $3",
                &[&exporter_id, &now, &error],
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(%exporter, "SNMP poll failed: {error}");
            return Ok(PollResult {
                exporter,
                agent,
                ok: false,
                sys_name: None,
                interfaces: 0,
                counters: 0,
                error: Some(error),
                last_success: last_success.map(|t| t.to_rfc3339()),
            });
        }
        Ok(d) => d,
    };
    let prev_counters: BTreeMap<String, (String, String)> = previous
        .as_ref()
        .and_then(|r| r.get::<_, Option<String>>(1))
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default();
    let prev_uptime: Option<i64> = previous.as_ref().and_then(|r| r.get(2));
    let rebooted = match (prev_uptime, data.sys_uptime) {
        (Some(p), Some(n)) => i64::from(n) < p,
        _ => false,
    };
    // After a long gap (failed polls, the timer stopped) one delta would smear days of
    // traffic into one average: start over instead.
    let secs = last_success
        .map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
        .filter(|s| *s > 0.0 && *s <= max_gap_secs);
    tx.execute(
        "UPDATE exporters SET snmp_name = $2 WHERE id = $1 AND snmp_name IS DISTINCT FROM $2",
        &[&exporter_id, &data.sys_name],
    )
    .await?;
    let mut counters_now = BTreeMap::new();
    let mut counter_rows = 0;
    for (ifindex, i) in &data.interfaces {
        let speed = i.speed_bps.and_then(|s| i64::try_from(s).ok());
        let status = i.oper_status.and_then(|s| i16::try_from(s).ok());
        tx.execute(
            "INSERT INTO interfaces (exporter_id, ifindex, snmp_name, snmp_descr, snmp_alias, measured_speed_bps, oper_status)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (exporter_id, ifindex) DO UPDATE SET
                 snmp_name = $3, snmp_descr = $4, snmp_alias = $5, measured_speed_bps = $6, oper_status = $7",
            &[&exporter_id, &i64::from(*ifindex), &i.name, &i.descr, &i.alias, &speed, &status],
        )
        .await?;
        let (Some(inn), Some(out)) = (i.in_octets, i.out_octets) else {
            continue;
        };
        counters_now.insert(ifindex.to_string(), (inn.to_string(), out.to_string()));
        if rebooted {
            continue;
        }
        let Some(secs) = secs else {
            continue;
        };
        let prev = prev_counters.get(&ifindex.to_string());
        let prev_in = prev.and_then(|p| p.0.parse::<u64>().ok());
        let prev_out = prev.and_then(|p| p.1.parse::<u64>().ok());
        let (Some(d_in), Some(d_out)) = (
            delta(prev_in, inn, secs, i.speed_bps),
            delta(prev_out, out, secs, i.speed_bps),
        ) else {
            continue;
        };
        tx.execute(
            "INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets, oper_status)
             VALUES ($1, $2, $3, 'snmp', $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[&now, &exporter_id, &i64::from(*ifindex), &secs, &d_in, &d_out, &status],
        )
        .await?;
        counter_rows += 1;
    }
    let counters_json = serde_json::to_string(&counters_now)?;
    let uptime = data.sys_uptime.map(i64::from);
    let count = i32::try_from(data.interfaces.len()).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO snmp_polls (exporter_id, attempted_at, succeeded_at, error, interfaces, counters, sys_uptime)
         VALUES ($1, $2, $2, NULL, $3, $4::text::jsonb, $5)
         ON CONFLICT (exporter_id) DO UPDATE SET attempted_at = $2, succeeded_at = $2, error = NULL,
             interfaces = $3, counters = EXCLUDED.counters, sys_uptime = $5",
        &[&exporter_id, &now, &count, &counters_json, &uptime],
    )
    .await?;
    tx.commit().await?;
    Ok(PollResult {
        exporter,
        agent,
        ok: true,
        sys_name: data.sys_name,
        interfaces: data.interfaces.len(),
        counters: counter_rows,
        error: None,
        last_success: Some(now.to_rfc3339()),
    })
}

/// Look up every exporter's reverse DNS name (bounded in time per address) and store
/// it as the `dns` name source; a failed lookup keeps the previous name.
async fn reverse_dns(
    client: &tokio_postgres::Client,
    exporters: &[(i32, IpAddr)],
) -> anyhow::Result<usize> {
    let mut done = 0;
    for (id, address) in exporters {
        let a = *address;
        let lookup = tokio::task::spawn_blocking(move || dns_lookup::lookup_addr(&a));
        let name = match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(Ok(name))) if name != address.to_string() => name,
            _ => continue,
        };
        client
            .execute(
                "UPDATE exporters SET dns_name = $2 WHERE id = $1 AND dns_name IS DISTINCT FROM $2",
                &[id, &name],
            )
            .await?;
        done += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_and_never_show_secrets() {
        let t: toml::Table = "version = \"3\"\nuser = \"flow\"\nauth_protocol = \"sha256\"\nauth_password = \"authsecret1\"\npriv_protocol = \"aes\"\npriv_password = \"privsecret1\"\n"
            .parse()
            .unwrap();
        let c = parse_credentials(&t).unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("flow") && shown.contains("Sha256"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
        let v2: toml::Table = "version = \"2c\"\ncommunity = \"s3cret\"\n"
            .parse()
            .unwrap();
        assert!(!format!("{:?}", parse_credentials(&v2).unwrap()).contains("s3cret"));
        let short: toml::Table = "version = \"3\"\nuser = \"u\"\nauth_password = \"short\"\n"
            .parse()
            .unwrap();
        assert!(parse_credentials(&short)
            .unwrap_err()
            .to_string()
            .contains("8 characters"));
        let typo: toml::Table = "version = \"2c\"\ncomunity = \"x\"\n".parse().unwrap();
        assert!(parse_credentials(&typo)
            .unwrap_err()
            .to_string()
            .contains("comunity"));
    }

    #[test]
    fn deltas_reject_resets_and_impossible_rates() {
        assert_eq!(delta(Some(100), 350, 300.0, None), Some(250));
        // Backwards is a reset (cleared counters), not a wrap, with or without a speed.
        assert_eq!(delta(Some(u64::MAX - 9), 10, 300.0, None), None);
        assert_eq!(delta(None, 10, 300.0, None), None);
        // A counter reset to a small value looks like a huge wrap: more than twice
        // the line rate could carry, so not a delta.
        assert_eq!(
            delta(Some(5_000_000_000), 10, 300.0, Some(1_000_000_000)),
            None
        );
        assert_eq!(
            delta(Some(0), 37_500_000_000, 300.0, Some(1_000_000_000)),
            Some(37_500_000_000)
        );
    }
}
