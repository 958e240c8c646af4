//! `flowstage-setup status`: what is really true on this host, not what a config file
//! says: the configuration, each managed file against what `reconfigure` would write
//! (drift), each service's process, the collector's own counters, the database, disk,
//! time, postfix's listening sockets, the pg_hba block, and the web daemon over HTTP.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::checks::Check;
use super::files::{self, ChangeKind};
use super::preflight::{disk_space, human_bytes};
use super::render::{self, pg_hba_path};
use super::steps::{self, Context};

/// Migrations in `sql/` the database has not applied yet.
pub async fn pending_migrations(client: &tokio_postgres::Client) -> anyhow::Result<Vec<i32>> {
    let exists = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    let applied: Vec<i32> = if exists {
        client
            .query("SELECT version FROM schema_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    Ok(crate::db::MIGRATIONS
        .iter()
        .map(|m| m.0)
        .filter(|v| !applied.contains(v))
        .collect())
}

pub fn file_checks(ctx: &Context<'_>) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for desired in ctx.all_files()? {
        let change = files::compare(ctx.host, desired)?;
        let name = format!("file {}", change.desired.path.display());
        checks.push(match change.kind {
            ChangeKind::Unchanged => Check::ok(name, "as rendered"),
            ChangeKind::Create => Check::fail(name, "missing; `flowstage-setup reconfigure` writes it"),
            ChangeKind::Update => Check::warn(
                name,
                "drift: differs from the rendered version; `reconfigure --dry-run` shows the diff, `reconfigure` restores it",
            ),
            ChangeKind::Metadata => Check::warn(
                name,
                format!(
                    "drift: {}",
                    change.metadata_note.as_deref().unwrap_or("mode or owner differs")
                ),
            ),
        });
    }
    Ok(checks)
}

pub fn pg_hba_check(ctx: &Context<'_>) -> Check {
    let path = pg_hba_path(ctx.pg_version);
    let name = "pg_hba block";
    let Ok(text) = std::fs::read_to_string(ctx.host.path(&path)) else {
        return Check::fail(name, format!("{path} cannot be read"));
    };
    let first_rule = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && (!l.starts_with('#') || l.starts_with(files::BLOCK_BEGIN)));
    match (files::block_body(&text), first_rule) {
        (None, _) => Check::fail(name, format!("{path}: the Flowstage block is missing")),
        (Some(_), Some(l)) if l.starts_with(files::BLOCK_BEGIN) => {
            Check::ok(name, format!("{path}: present and first"))
        }
        (Some(_), _) => Check::fail(
            name,
            format!("{path}: a rule precedes the Flowstage block, so it may not apply"),
        ),
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

fn service_checks(ctx: &Context<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    for service in render::SERVICES {
        let name = format!("service {service}");
        checks.push(match steps::flowstage_pid(ctx.systemd, ctx.host, service) {
            Some(pid) => Check::ok(
                name,
                format!(
                    "running, pid {pid}, up {}",
                    steps::process_age(pid)
                        .map(human_duration)
                        .unwrap_or_else(|| "?".into())
                ),
            ),
            None => Check::fail(name, "not running"),
        });
    }
    // Debian's postfix.service is a wrapper that stays "active" without its master
    // process: ask the process itself.
    let master = std::fs::read_to_string(steps::POSTFIX_MASTER_PID)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    checks.push(match master {
        Some(pid) => Check::ok(
            "service postfix",
            format!(
                "master pid {pid}, up {}",
                steps::process_age(pid)
                    .map(human_duration)
                    .unwrap_or_else(|| "?".into())
            ),
        ),
        None => Check::fail("service postfix", "the master process is not running"),
    });
    let mut others = Vec::new();
    if !ctx.systemd {
        others.push("cron");
    }
    for s in others {
        let name = format!("service {s}");
        checks.push(if steps::service_running(ctx, s) {
            Check::ok(name, "running")
        } else {
            Check::fail(name, "not running")
        });
    }
    if let Some(time) = steps::time_service(ctx.config.time.daemon) {
        checks.push(if !steps::can_set_clock() {
            Check::warn(
                format!("service {time}"),
                "not started: this machine cannot set its clock (container); the host keeps time",
            )
        } else if steps::service_running(ctx, time) {
            Check::ok(format!("service {time}"), "running")
        } else {
            Check::fail(format!("service {time}"), "not running")
        });
    }
    checks
}

/// One exporter's counters as the collector exports them.
#[derive(Debug, Default, Clone)]
pub struct ExporterCounters {
    pub packets: u64,
    pub flows: u64,
    pub lost: u64,
    pub errors: u64,
    pub last_seen: u64,
}

/// Per-exporter counters from the collector's Prometheus text.
pub fn parse_metrics(text: &str) -> BTreeMap<String, ExporterCounters> {
    let mut out: BTreeMap<String, ExporterCounters> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(exporter) = labels
            .split("exporter=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let v: u64 = value.trim().parse().unwrap_or(0);
        let e = out.entry(exporter.to_string()).or_default();
        match name {
            "flowstage_exporter_packets_total" => e.packets += v,
            "flowstage_exporter_flows_total" => e.flows += v,
            "flowstage_exporter_lost_flows_total" => e.lost += v,
            "flowstage_exporter_decode_errors_total" => e.errors += v,
            "flowstage_exporter_last_seen_seconds" => e.last_seen = e.last_seen.max(v),
            _ => {}
        }
    }
    out
}

async fn collector_checks(ctx: &Context<'_>) -> Vec<Check> {
    let Some(metrics) = ctx.config.collector.metrics else {
        return vec![Check::warn(
            "collector receiving",
            "collector.metrics is not set, so its counters cannot be read",
        )];
    };
    let url = format!("http://{metrics}/metrics");
    let text = match http_client(Duration::from_secs(2)) {
        Ok(c) => match c.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => return vec![Check::fail("collector receiving", format!("{url}: {e}"))],
        },
        Err(e) => return vec![Check::fail("collector receiving", format!("{e:#}"))],
    };
    let exporters = parse_metrics(&text);
    if exporters.is_empty() {
        return vec![Check::warn(
            "collector receiving",
            format!(
                "no exporter has sent anything yet (listening on {})",
                ctx.config
                    .collector
                    .listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )];
    }
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    exporters
        .into_iter()
        .map(|(exporter, c)| {
            let name = format!("exporter {exporter}");
            let age = now.saturating_sub(c.last_seen);
            let loss = if c.flows + c.lost > 0 {
                100.0 * c.lost as f64 / (c.flows + c.lost) as f64
            } else {
                0.0
            };
            let detail = format!(
                "last packet {} ago, {} flows, loss {loss:.2} %, {} decode error(s)",
                human_duration(Duration::from_secs(age)),
                c.flows,
                c.errors
            );
            if age > 600 {
                Check::warn(name, format!("silent: {detail}"))
            } else if loss > 1.0 || c.errors * 1000 > c.packets.max(1) {
                Check::warn(name, detail)
            } else {
                Check::ok(name, detail)
            }
        })
        .collect()
}

async fn database_checks(ctx: &Context<'_>) -> Vec<Check> {
    let url = ctx.database_url();
    let client = match tokio::time::timeout(Duration::from_secs(5), crate::db::connect(&url)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return vec![Check::fail("database", format!("{e:#}"))],
        Err(_) => return vec![Check::fail("database", "no answer within 5 s")],
    };
    let mut checks = vec![Check::ok(
        "database",
        format!(
            "reachable at {}",
            crate::config::redact_url(&ctx.config.database.url)
        ),
    )];
    checks.push(match pending_migrations(&client).await {
        Ok(p) if p.is_empty() => Check::ok(
            "migrations",
            format!("current ({} applied)", crate::db::MIGRATIONS.len()),
        ),
        Ok(p) => Check::fail("migrations", format!("{} pending: {p:?}", p.len())),
        Err(e) => Check::fail("migrations", format!("{e:#}")),
    });
    let newest = client
        .query_one(
            "SELECT extract(epoch FROM now() - max(minute))::bigint FROM flow_totals",
            &[],
        )
        .await;
    checks.push(match newest {
        Ok(row) => match row.get::<_, Option<i64>>(0) {
            None => Check::warn("newest bucket", "no aggregates yet"),
            Some(age) if age <= 600 => Check::ok(
                "newest bucket",
                format!(
                    "{} old",
                    human_duration(Duration::from_secs(age.max(0) as u64))
                ),
            ),
            Some(age) => Check::warn(
                "newest bucket",
                format!(
                    "{} old: no flows stored recently",
                    human_duration(Duration::from_secs(age.max(0) as u64))
                ),
            ),
        },
        Err(e) => Check::fail("newest bucket", format!("{e}")),
    });
    checks.push(rollup_check(&client).await);
    checks.push(unnamed_exporters_check(&client).await);
    if !ctx.config.snmp.targets.is_empty() {
        checks.push(snmp_check(&client, ctx.config.snmp.interval_secs).await);
    }
    checks.push(alerts_check(&client).await);
    checks
}

/// The alerts active now (the rules are evaluated by flowstage-alerts.timer).
async fn alerts_check(client: &tokio_postgres::Client) -> Check {
    match crate::alerts::active(client).await {
        Ok(list) if list.is_empty() => Check::ok("alerts", "no active alerts"),
        Ok(list) => Check::warn(
            "alerts",
            format!(
                "{} active: {}",
                list.len(),
                list.iter()
                    .map(|a| format!(
                        "{} since {} UTC: {}",
                        a.rule,
                        a.started_at.format("%Y-%m-%d %H:%M"),
                        a.message
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        Err(e) => Check::warn("alerts", format!("{e:#}")),
    }
}

/// SNMP polls: a failed one keeps the last good names, so the operator must hear of it
/// here; polls older than three intervals mean the timer is not running.
async fn snmp_check(client: &tokio_postgres::Client, interval_secs: u64) -> Check {
    let rows = client
        .query(
            "SELECT host(e.address), p.error,
                    to_char(p.succeeded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
                    extract(epoch FROM now() - p.attempted_at)::bigint
             FROM snmp_polls p JOIN exporters e ON e.id = p.exporter_id ORDER BY e.address",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return Check::warn("snmp", format!("{e}")),
    };
    if rows.is_empty() {
        return Check::warn(
            "snmp",
            "no exporter polled yet: run `flowstage-collector poll` to see why",
        );
    }
    let mut problems = Vec::new();
    let mut stale = 0;
    for r in &rows {
        let address: String = r.get(0);
        if let Some(error) = r.get::<_, Option<String>>(1) {
            let kept = match r.get::<_, Option<String>>(2) {
                Some(t) => format!("names of {t} UTC kept"),
                None => "never polled successfully".to_string(),
            };
            problems.push(format!("{address}: {error} ({kept})"));
        }
        if r.get::<_, Option<i64>>(3).unwrap_or(0) > 3 * interval_secs as i64 {
            stale += 1;
        }
    }
    if !problems.is_empty() {
        return Check::warn(
            "snmp",
            format!(
                "{} of {} poll(s) failed: {}",
                problems.len(),
                rows.len(),
                problems.join("; ")
            ),
        );
    }
    if stale > 0 {
        return Check::warn(
            "snmp",
            format!("{stale} exporter(s) not polled for over three intervals: is flowstage-poll.timer (or the cron line) running?"),
        );
    }
    Check::ok("snmp", format!("{} exporter(s) polled", rows.len()))
}

/// Exporters registered from their flows but not named yet: the operator should add
/// them to exporters.cfg (a warning, so the hourly mail reports a new router once).
async fn unnamed_exporters_check(client: &tokio_postgres::Client) -> Check {
    let rows = client
        .query(
            "SELECT host(address), to_char(first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
                    (SELECT count(*) FROM exporters),
                    (SELECT count(*) FROM exporters WHERE name IS NULL)
             FROM exporters WHERE name IS NULL ORDER BY first_seen LIMIT 10",
            &[],
        )
        .await;
    match rows {
        Ok(rows) if rows.is_empty() => {
            Check::ok("exporter names", "every registered exporter has a name")
        }
        Ok(rows) => {
            let total: i64 = rows[0].get(2);
            let unnamed: i64 = rows[0].get(3);
            let listed: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} (first seen {} UTC)",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1)
                    )
                })
                .collect();
            Check::warn(
                "exporter names",
                format!(
                    "{unnamed} of {total} exporters have no name: {}{}; add them to exporters.cfg and run `flowstage-setup routers import`, or cover them with an [[snmp.target]] (docs/routers.md)",
                    listed.join(", "),
                    if unnamed > 10 { ", ..." } else { "" }
                ),
            )
        }
        Err(e) => Check::warn("exporter names", format!("{e}")),
    }
}

/// Hours are rolled up within about an hour of their end; more behind than two hours
/// means the timer (or cron line) is not running or failing.
async fn rollup_check(client: &tokio_postgres::Client) -> Check {
    let lag = client
        .query_one(
            "SELECT extract(epoch FROM now() - coalesce(l.done_to, m.oldest))::bigint,
                    l.done_to::text
             FROM rollup_levels l, (SELECT min(minute) AS oldest FROM flow_totals) m
             WHERE l.level = 'hour'",
            &[],
        )
        .await;
    match lag {
        Ok(row) => match (row.get::<_, Option<i64>>(0), row.get::<_, Option<String>>(1)) {
            (None, _) => Check::ok("rollups", "nothing to roll up yet"),
            (Some(lag), done) if lag > 2 * 3600 => Check::warn(
                "rollups",
                format!(
                    "hours are rolled up to {}, {} behind: is flowstage-rollup.timer (or the cron line) running? Run `flowstage-collector rollup` to see why",
                    done.as_deref().unwrap_or("nothing yet"),
                    human_duration(Duration::from_secs(lag.max(0) as u64))
                ),
            ),
            (Some(_), None) => Check::ok("rollups", "the first hour is not complete yet"),
            (Some(_), Some(done)) => Check::ok("rollups", format!("hours rolled up to {done}")),
        },
        Err(e) => Check::warn("rollups", format!("{e}")),
    }
}

/// The raw flow archive: its size against its cap, and whether files keep coming (a
/// collector that stopped archiving would otherwise go unnoticed until a drill-down
/// finds nothing).
fn archive_check(ctx: &Context<'_>, now: chrono::DateTime<chrono::Utc>) -> Check {
    let c = &ctx.config.collector;
    let root = crate::archive::root(&ctx.host.path(&c.data_dir));
    let files = match crate::archive::list(&root) {
        Ok(f) => f,
        Err(e) => return Check::warn("archive", format!("{e:#}")),
    };
    let Some(newest) = files.iter().map(|f| f.window).max() else {
        return Check::ok("archive", format!("no files yet in {}", root.display()));
    };
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let rotate = i64::try_from(c.archive_rotate_secs).unwrap_or(300);
    let age = (now - newest).num_seconds() - rotate;
    let text = format!(
        "{} file(s), {} of its {} cap ({:.0} %), newest for {} UTC",
        files.len(),
        human_bytes(bytes),
        human_bytes(c.archive_max_bytes),
        bytes as f64 * 100.0 / c.archive_max_bytes.max(1) as f64,
        newest.format("%Y-%m-%d %H:%M")
    );
    if age > (3 * rotate).max(3600) {
        Check::warn(
            "archive",
            format!(
                "{text}: nothing archived for {}; is the collector receiving flows?",
                human_duration(Duration::from_secs(age.max(0) as u64))
            ),
        )
    } else {
        Check::ok("archive", text)
    }
}

fn disk_checks(ctx: &Context<'_>) -> Vec<Check> {
    let data = &ctx.config.collector.data_dir;
    let mut checks = Vec::new();
    for (name, path) in [
        ("disk data", data.clone()),
        ("disk spool", data.join("spool")),
        (
            "disk database",
            Path::new("/var/lib/postgresql").to_path_buf(),
        ),
    ] {
        let Some(space) = disk_space(&ctx.host.path(&path)) else {
            checks.push(Check::fail(
                name,
                format!("{} does not exist", path.display()),
            ));
            continue;
        };
        let (at, free) = (space.at, space.free);
        // As df shows it, so the number matches what the operator sees there.
        let pct = 100.0 - space.used_percent;
        let text = format!(
            "{} free ({pct:.0} %) at {}",
            human_bytes(free),
            at.display()
        );
        let spool_room = name != "disk spool" || free >= ctx.config.collector.spool_max_bytes;
        checks.push(if pct < 2.0 || free < 256 << 20 {
            Check::fail(name, text)
        } else if pct < 10.0 || !spool_room {
            Check::warn(
                name,
                if spool_room {
                    text
                } else {
                    format!("{text}: less than collector.spool_max_bytes")
                },
            )
        } else {
            Check::ok(name, text)
        });
    }
    checks
}

/// TCP listeners on port 25, from /proc/net/tcp{,6}: (address, loopback?).
fn smtp_listeners() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
                continue;
            };
            if *state != "0A" {
                continue;
            }
            let Some((addr, port)) = local.split_once(':') else {
                continue;
            };
            if port != "0019" {
                continue;
            }
            let loopback = if v6 {
                addr == "00000000000000000000000001000000"
                    || addr.starts_with("0000000000000000FFFF0000") && addr.ends_with("7F")
            } else {
                addr.ends_with("7F")
            };
            out.push((addr.to_string(), loopback));
        }
    }
    out
}

fn postfix_check() -> Check {
    let listeners = smtp_listeners();
    let name = "postfix loopback only";
    if listeners.is_empty() {
        Check::fail(name, "nothing listens on port 25")
    } else if listeners.iter().all(|(_, lo)| *lo) {
        Check::ok(
            name,
            format!("{} listener(s), all on loopback", listeners.len()),
        )
    } else {
        Check::fail(name, "port 25 is open on a non-loopback address")
    }
}

pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnyCert))
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .tls_backend_preconfigured(tls)
        .build()?)
}

/// The local web daemon may use a self-signed certificate; status checks that it
/// answers, not who signed it.
#[derive(Debug)]
struct AcceptAnyCert;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn web_check(ctx: &Context<'_>) -> Check {
    let url = format!("{}/healthz", ctx.config.web.local_url());
    let name = "web";
    match http_client(Duration::from_secs(3)) {
        Ok(client) => match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                Check::ok(name, format!("{url} answers {}", r.status()))
            }
            Ok(r) => Check::fail(name, format!("{url} answers {}", r.status())),
            Err(e) => Check::fail(name, format!("{url}: {e}")),
        },
        Err(e) => Check::fail(name, format!("{e:#}")),
    }
}

/// Every check that applies to this host (only file checks under `--root`).
pub fn run(ctx: &Context<'_>) -> anyhow::Result<Vec<Check>> {
    let mut checks = vec![Check::ok(
        "config",
        format!("{} is valid", render::CONFIG_PATH),
    )];
    checks.extend(file_checks(ctx)?);
    checks.push(pg_hba_check(ctx));
    if !ctx.host.is_live() {
        return Ok(checks);
    }
    checks.extend(service_checks(ctx));
    let rt = steps::runtime()?;
    checks.extend(rt.block_on(collector_checks(ctx)));
    checks.extend(rt.block_on(database_checks(ctx)));
    checks.extend(disk_checks(ctx));
    if ctx.config.collector.archive {
        checks.push(archive_check(ctx, chrono::Utc::now()));
    }
    let (synced, why) = super::preflight::time_sync(ctx.host);
    checks.push(
        if ctx.config.time.daemon == crate::config::TimeDaemon::None && !synced {
            Check::warn(
                "time sync",
                format!("time.daemon = none and {why}: make sure something keeps this clock right"),
            )
        } else if !steps::can_set_clock() {
            Check::warn(
                "time sync",
                "this machine cannot set its clock (container): the host's clock is used",
            )
        } else if synced {
            Check::ok("time sync", why)
        } else {
            Check::warn("time sync", why)
        },
    );
    checks.push(postfix_check());
    checks.push(rt.block_on(web_check(ctx)));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_per_exporter() {
        let text = "# HELP x\nflowstage_exporter_flows_total{exporter=\"192.0.2.1\",protocol=\"v9\",source_id=\"0\"} 90\nflowstage_exporter_flows_total{exporter=\"192.0.2.1\",protocol=\"v9\",source_id=\"1\"} 10\nflowstage_exporter_lost_flows_total{exporter=\"192.0.2.1\",protocol=\"v9\",source_id=\"1\"} 5\nflowstage_exporter_last_seen_seconds{exporter=\"192.0.2.1\",protocol=\"v9\",source_id=\"0\"} 1700000000\n";
        let m = parse_metrics(text);
        let e = &m["192.0.2.1"];
        assert_eq!((e.flows, e.lost, e.last_seen), (100, 5, 1_700_000_000));
    }
}
