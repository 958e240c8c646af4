//! Alert rules (`[[alerts.rule]]`) evaluated against the database and the data
//! directory: exporter silent, flow loss, decode errors, interface utilisation, spool or
//! archive nearly full. An alert is an episode in the `alerts` table: it starts when a
//! rule's condition holds for a subject, clears when it no longer does, and mails once
//! for each (the stamps make a retried or repeated run send nothing twice). Also the
//! daily summary mail.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{AlertKind, AlertRule, Config};
use crate::mail::{Message, Transport};

/// A rule's condition holding for one subject now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// What it is about: an exporter address, `address ifindex direction`, `spool`.
    pub subject: String,
    pub value: f64,
    pub message: String,
}

/// One alert as `alerts`, `status` and the web UI show it.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: i64,
    pub rule: String,
    pub subject: String,
    pub started_at: DateTime<Utc>,
    /// The last evaluation that found the condition holding.
    pub holding_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
    pub value: Option<f64>,
    pub message: String,
}

/// What one evaluation did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Evaluation {
    pub fired: Vec<Alert>,
    pub cleared: Vec<Alert>,
    pub active: Vec<Alert>,
    pub mails_sent: usize,
    pub mail_errors: Vec<String>,
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The subjects a rule's condition holds for at `now`.
pub async fn conditions(
    client: &Client,
    config: &Config,
    rule: &AlertRule,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Condition>> {
    let minutes = i32::try_from(rule.minutes).unwrap_or(i32::MAX);
    let mut out = Vec::new();
    match rule.kind {
        AlertKind::Silent => {
            // The end of the last minute with datagrams; exporters that never sent
            // any (registered from a file or an SNMP target) are not silent, only new.
            let rows = client
                .query(
                    "SELECT host(e.address), coalesce(e.name, host(e.address)),
                            extract(epoch FROM $1::timestamptz - (max(h.minute) + interval '1 minute'))::float8 / 60
                     FROM exporter_health h JOIN exporters e ON e.id = h.exporter_id
                     WHERE h.packets > 0
                     GROUP BY e.address, e.name
                     HAVING max(h.minute) + interval '1 minute' < $1::timestamptz - make_interval(mins => $2)",
                    &[&now, &minutes],
                )
                .await?;
            for r in rows {
                let (address, name, silent): (String, String, f64) = (r.get(0), r.get(1), r.get(2));
                out.push(Condition {
                    subject: address.clone(),
                    value: silent,
                    message: format!(
                        "exporter {name} ({address}) has sent nothing for {silent:.0} minutes (limit {})",
                        rule.minutes
                    ),
                });
            }
        }
        AlertKind::Loss | AlertKind::DecodeErrors => {
            let rows = client
                .query(
                    "SELECT host(e.address), coalesce(e.name, host(e.address)),
                            sum(h.flows)::int8, sum(h.lost)::int8, sum(h.decode_errors)::int8
                     FROM exporter_health h JOIN exporters e ON e.id = h.exporter_id
                     WHERE h.minute >= $1::timestamptz - make_interval(mins => $2) AND h.minute <= $1
                     GROUP BY e.address, e.name",
                    &[&now, &minutes],
                )
                .await?;
            for r in rows {
                let (address, name): (String, String) = (r.get(0), r.get(1));
                let (flows, lost, errors): (i64, i64, i64) = (r.get(2), r.get(3), r.get(4));
                if rule.kind == AlertKind::Loss {
                    let seen = flows + lost;
                    // Too few flows make percentages noise.
                    if seen < 100 {
                        continue;
                    }
                    let pct = lost as f64 * 100.0 / seen as f64;
                    if pct > rule.percent {
                        out.push(Condition {
                            subject: address.clone(),
                            value: pct,
                            message: format!(
                                "exporter {name} ({address}) lost {pct:.1} % of its flows over {} minutes ({lost} of {seen}; limit {} %)",
                                rule.minutes, rule.percent
                            ),
                        });
                    }
                } else if errors > n(rule.count) {
                    out.push(Condition {
                        subject: address.clone(),
                        value: errors as f64,
                        message: format!(
                            "exporter {name} ({address}) sent {errors} undecodable set(s) or datagram(s) in {} minutes (limit {})",
                            rule.minutes, rule.count
                        ),
                    });
                }
            }
        }
        AlertKind::InterfaceUtilisation if rule.device_counters => {
            // The average over the window per source (SNMP and sFlow are not added
            // up), needing counters for at least 80 % of it.
            let rows = client
                .query(
                    "WITH c AS (
                         SELECT exporter_id, ifindex, source,
                                sum(in_octets) * 8 / sum(secs) AS in_bps,
                                sum(out_octets) * 8 / sum(secs) AS out_bps, sum(secs) AS covered
                         FROM interface_counters
                         WHERE time > $1::timestamptz - make_interval(mins => $2) AND time <= $1
                           -- An interval longer than the window cannot be placed in it.
                           AND secs <= 60 * $2
                         GROUP BY 1, 2, 3)
                     SELECT host(e.address), coalesce(e.name, host(e.address)), c.ifindex,
                            coalesce(i.name, i.description, c.ifindex::text), c.source,
                            (c.in_bps * 100 / i.speed_bps)::float8, (c.out_bps * 100 / i.speed_bps)::float8,
                            i.speed_bps
                     FROM c JOIN interfaces i ON i.exporter_id = c.exporter_id AND i.ifindex = c.ifindex
                     JOIN exporters e ON e.id = c.exporter_id
                     WHERE i.speed_bps > 0 AND c.covered >= 0.8 * 60 * $2
                     ORDER BY 1, 3, 5",
                    &[&now, &minutes],
                )
                .await?;
            for r in rows {
                let (address, name, ifindex, ifname, source): (
                    String,
                    String,
                    i64,
                    String,
                    String,
                ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                let speed: i64 = r.get(7);
                for (direction, pct) in [("in", r.get::<_, f64>(5)), ("out", r.get::<_, f64>(6))] {
                    let subject = format!("{address} {ifindex} {direction}");
                    // Both sources over the limit: one alert, the first source's.
                    if pct <= rule.percent || out.iter().any(|c: &Condition| c.subject == subject) {
                        continue;
                    }
                    out.push(Condition {
                        subject,
                        value: pct,
                        message: format!(
                            "interface {ifname} (ifIndex {ifindex}) of {name} ({address}) averaged {pct:.1} % of its {} over {} minutes ({direction}, measured by {source}; limit {} %)",
                            human_bps(speed as f64),
                            rule.minutes,
                            rule.percent
                        ),
                    });
                }
            }
        }
        AlertKind::InterfaceUtilisation => {
            // Only whole minutes the collector has flushed: the window ends before the
            // minute still open for late flows.
            let grace = i64::try_from(config.collector.flush_grace_secs).unwrap_or(60) + 60;
            let rows = client
                .query(
                    "WITH bounds AS (
                         SELECT date_trunc('minute', $1::timestamptz - make_interval(secs => $3)) AS hi),
                     w AS (
                         SELECT t.minute, t.exporter_id, t.ifindex, t.direction, sum(t.bytes) * 8 / 60.0 AS bps
                         FROM flow_totals t, bounds b
                         WHERE t.minute >= b.hi - make_interval(mins => $2) AND t.minute < b.hi
                         GROUP BY 1, 2, 3, 4)
                     SELECT host(e.address), coalesce(e.name, host(e.address)), w.ifindex,
                            coalesce(i.name, i.description, w.ifindex::text), w.direction,
                            (min(w.bps) * 100 / i.speed_bps)::float8, i.speed_bps
                     FROM w JOIN interfaces i ON i.exporter_id = w.exporter_id AND i.ifindex = w.ifindex
                     JOIN exporters e ON e.id = w.exporter_id
                     WHERE i.speed_bps > 0
                     GROUP BY e.address, e.name, w.ifindex, i.name, i.description, w.direction, i.speed_bps
                     HAVING count(*) = $2 AND min(w.bps) * 100 > $4::float8 * i.speed_bps",
                    &[&now, &minutes, &(grace as f64), &rule.percent],
                )
                .await?;
            for r in rows {
                let (address, name, ifindex, ifname): (String, String, i64, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                let direction = if r.get::<_, i16>(4) == 0 { "in" } else { "out" };
                let pct: f64 = r.get(5);
                let speed: i64 = r.get(6);
                out.push(Condition {
                    subject: format!("{address} {ifindex} {direction}"),
                    value: pct,
                    message: format!(
                        "interface {ifname} (ifIndex {ifindex}) of {name} ({address}) ran above {} % of its {} for {} minutes ({direction}, at least {pct:.1} %)",
                        rule.percent,
                        human_bps(speed as f64),
                        rule.minutes
                    ),
                });
            }
        }
        AlertKind::SpoolFull => {
            let dir = config.collector.data_dir.join("spool");
            let used = dir_bytes(&dir);
            let pct = used as f64 * 100.0 / config.collector.spool_max_bytes.max(1) as f64;
            if pct > rule.percent {
                out.push(Condition {
                    subject: "spool".into(),
                    value: pct,
                    message: format!(
                        "the spool ({}) holds {} of its {} limit ({pct:.0} %, alert above {} %): the database is not taking batches",
                        dir.display(),
                        human_bytes(used),
                        human_bytes(config.collector.spool_max_bytes),
                        rule.percent
                    ),
                });
            }
        }
        AlertKind::ArchiveFull => {
            // The archive stays at its own cap by design (the oldest files go), so what
            // can fill up is the file system under it.
            let root = crate::archive::root(&config.collector.data_dir);
            let used = dir_bytes(&root);
            let fs_pct = crate::setup::preflight::disk_space(&config.collector.data_dir)
                .map(|d| d.used_percent)
                .unwrap_or(0.0);
            if fs_pct > rule.percent {
                out.push(Condition {
                    subject: "archive".into(),
                    value: fs_pct,
                    message: format!(
                        "the file system holding the archive ({}) is {fs_pct:.0} % full (alert above {} %); the archive holds {} of its {} cap",
                        root.display(),
                        rule.percent,
                        human_bytes(used),
                        human_bytes(config.collector.archive_max_bytes)
                    ),
                });
            }
        }
    }
    Ok(out)
}

fn dir_bytes(dir: &Path) -> u64 {
    crate::archive::files_under(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

pub use crate::setup::preflight::human_bytes;

pub fn human_bps(bps: f64) -> String {
    let units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let mut v = bps;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

fn alert_from(r: &tokio_postgres::Row) -> Alert {
    Alert {
        id: r.get(0),
        rule: r.get(1),
        subject: r.get(2),
        started_at: r.get(3),
        holding_at: r.get(4),
        cleared_at: r.get(5),
        value: r.get(6),
        message: r.get(7),
    }
}

const ALERT_COLUMNS: &str = "id, rule, subject, started_at, holding_at, cleared_at, value, message";

/// The alerts still active.
pub async fn active(client: &Client) -> anyhow::Result<Vec<Alert>> {
    Ok(client
        .query(
            &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE cleared_at IS NULL ORDER BY started_at, id"),
            &[],
        )
        .await?
        .iter()
        .map(alert_from)
        .collect())
}

/// Alerts active at some time in [from, to), newest first.
pub async fn during(
    client: &Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<Alert>> {
    Ok(client
        .query(
            &format!(
                "SELECT {ALERT_COLUMNS} FROM alerts
                 WHERE started_at < $2 AND (cleared_at IS NULL OR cleared_at >= $1)
                 ORDER BY started_at DESC, id DESC LIMIT 500"
            ),
            &[&from, &to],
        )
        .await?
        .iter()
        .map(alert_from)
        .collect())
}

/// Evaluate every rule at `now`: start alerts whose condition holds and that are not
/// active, clear active ones whose condition no longer holds (or whose rule is gone),
/// then send the mails not sent yet.
pub async fn evaluate(
    client: &mut Client,
    config: &Config,
    now: DateTime<Utc>,
    mail: bool,
) -> anyhow::Result<Evaluation> {
    let mut holding: Vec<(String, Condition)> = Vec::new();
    for rule in &config.alerts.rules {
        let found = conditions(client, config, rule, now)
            .await
            .with_context(|| format!("evaluating rule {:?}", rule.name))?;
        holding.extend(found.into_iter().map(|c| (rule.name.clone(), c)));
    }
    let mut result = Evaluation::default();
    let tx = client.transaction().await?;
    // One evaluation at a time: a timer run overlapping a manual one must not start
    // the same alert twice (the unique index would refuse it anyway).
    tx.execute("SELECT pg_advisory_xact_lock(7303417)", &[])
        .await?;
    let active_now: Vec<Alert> = tx
        .query(
            &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE cleared_at IS NULL"),
            &[],
        )
        .await?
        .iter()
        .map(alert_from)
        .collect();
    for (rule, c) in &holding {
        if let Some(a) = active_now
            .iter()
            .find(|a| a.rule == *rule && a.subject == c.subject)
        {
            // Still holding: keep the latest value and message for the UI.
            tx.execute(
                "UPDATE alerts SET value = $2, message = $3, holding_at = $4 WHERE id = $1",
                &[&a.id, &c.value, &c.message, &now],
            )
            .await?;
            continue;
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO alerts (rule, subject, started_at, holding_at, value, message)
                     VALUES ($1, $2, $3, $3, $4, $5) RETURNING {ALERT_COLUMNS}"
                ),
                &[rule, &c.subject, &now, &c.value, &c.message],
            )
            .await?;
        result.fired.push(alert_from(&row));
    }
    let hold_down = chrono::Duration::minutes(i64::from(config.alerts.clear_after_minutes));
    let rules: Vec<&str> = config
        .alerts
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    for a in &active_now {
        let still = holding
            .iter()
            .any(|(rule, c)| *rule == a.rule && c.subject == a.subject);
        // A rule taken out of the configuration clears its alerts at once.
        let held_recently = a.holding_at + hold_down > now && rules.contains(&a.rule.as_str());
        if !still && !held_recently {
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE alerts SET cleared_at = $2 WHERE id = $1 RETURNING {ALERT_COLUMNS}"
                    ),
                    &[&a.id, &now],
                )
                .await?;
            result.cleared.push(alert_from(&row));
        }
    }
    tx.commit().await?;
    result.active = active(client).await?;
    if !config.alerts.mail {
        // Mail is off: these are not owed to anyone, so turning mail on later does not
        // send a backlog.
        client
            .execute(
                "UPDATE alerts SET start_mailed_at = coalesce(start_mailed_at, now()),
                     clear_mailed_at = CASE WHEN cleared_at IS NULL THEN NULL ELSE coalesce(clear_mailed_at, now()) END
                 WHERE start_mailed_at IS NULL OR (cleared_at IS NOT NULL AND clear_mailed_at IS NULL)",
                &[],
            )
            .await?;
    } else if mail {
        let (sent, errors) = send_pending(client, config).await?;
        result.mails_sent = sent;
        result.mail_errors = errors;
    }
    Ok(result)
}

/// Mail every start and clear not mailed yet, one message each, stamping each as it
/// goes out; a failed send is retried by the next run.
async fn send_pending(client: &Client, config: &Config) -> anyhow::Result<(usize, Vec<String>)> {
    let transport = Transport::from_config(config);
    let pending = client
        .query(
            &format!(
                "SELECT {ALERT_COLUMNS}, start_mailed_at IS NULL FROM alerts
                 WHERE start_mailed_at IS NULL OR (cleared_at IS NOT NULL AND clear_mailed_at IS NULL)
                 ORDER BY coalesce(cleared_at, started_at), id"
            ),
            &[],
        )
        .await?;
    let mut sent = 0;
    let mut errors = Vec::new();
    for r in &pending {
        let a = alert_from(r);
        let start_pending: bool = r.get(8);
        // An episode that started and cleared before any mail went out still gets both,
        // in order.
        let mut events = Vec::new();
        if start_pending {
            events.push(false);
        }
        if a.cleared_at.is_some() {
            events.push(true);
        }
        for cleared in events {
            let column = if cleared {
                "clear_mailed_at"
            } else {
                "start_mailed_at"
            };
            // Claimed before it is sent: a run overlapping this one (the timer and a
            // manual run) finds it taken and sends nothing.
            let claimed = client
                .execute(
                    &format!(
                        "UPDATE alerts SET {column} = now() WHERE id = $1 AND {column} IS NULL"
                    ),
                    &[&a.id],
                )
                .await?;
            if claimed == 0 {
                continue;
            }
            let message = alert_message(config, &a, cleared);
            let result = {
                let transport = transport.clone();
                tokio::task::spawn_blocking(move || crate::mail::send(&transport, &message))
                    .await
                    .context("the mail thread failed")?
            };
            match result {
                Ok(()) => sent += 1,
                Err(e) => {
                    // Released again, for the next run to retry.
                    client
                        .execute(
                            &format!("UPDATE alerts SET {column} = NULL WHERE id = $1"),
                            &[&a.id],
                        )
                        .await?;
                    errors.push(format!("alert {} ({}): {e}", a.id, a.rule));
                    break;
                }
            }
        }
    }
    Ok((sent, errors))
}

fn alert_message(config: &Config, a: &Alert, cleared: bool) -> Message {
    let site = &config.site.name;
    let (subject, body) = if cleared {
        let lasted = a
            .cleared_at
            .map(|c| human_duration((c - a.started_at).num_seconds()))
            .unwrap_or_default();
        (
            format!("[flowstage {site}] CLEARED: {} {}", a.rule, a.subject),
            format!(
                "Cleared at {} after {lasted}.\n\nIt was: {}\n\nStarted {}.\n",
                a.cleared_at.map(|c| c.to_rfc3339()).unwrap_or_default(),
                a.message,
                a.started_at.to_rfc3339()
            ),
        )
    } else {
        (
            format!("[flowstage {site}] ALERT: {} {}", a.rule, a.subject),
            format!(
                "{}\n\nStarted {}. You get one more mail when it clears.\nActive alerts: `flowstage-collector alerts`, the web UI's dashboard, or `flowstage-setup status`.\n",
                a.message,
                a.started_at.to_rfc3339()
            ),
        )
    };
    Message {
        from: crate::mail::sender(),
        to: config.site.admin_email.clone(),
        subject,
        body,
    }
}

pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} days", s / 86_400),
    }
}

/// The daily summary: top interfaces and talkers of the last 24 hours, exporter health
/// and the day's alerts, as plain text.
pub async fn daily_summary(
    client: &Client,
    config: &Config,
    now: DateTime<Utc>,
) -> anyhow::Result<Message> {
    use crate::report::{ReportBy, ReportQuery};
    let from = now - chrono::Duration::days(1);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "Flowstage on {}: the 24 hours from {} to {} (UTC).\n",
        config.site.name,
        from.format("%Y-%m-%d %H:%M"),
        now.format("%Y-%m-%d %H:%M")
    );
    let query = |by: ReportBy| ReportQuery {
        visible_to: None,
        from,
        to: now,
        by,
        exporter: None,
        interface: None,
        group: None,
        rank: Default::default(),
        direction: crate::collector::batch::Direction::In,
        top: 10,
    };
    let total = crate::report::run(client, &query(ReportBy::Total)).await?;
    let _ = writeln!(
        body,
        "Traffic: {} in {} flows ({} average).\n",
        human_bytes(total.total.bytes),
        total.total.flows,
        human_bps(total.total.bytes as f64 * 8.0 / 86_400.0)
    );
    for (title, by) in [
        ("Top interfaces (in)", ReportBy::Interface),
        ("Top talkers (source addresses)", ReportBy::SrcIp),
    ] {
        let r = crate::report::run(client, &query(by)).await?;
        let _ = writeln!(body, "{title}:");
        if r.rows.is_empty() {
            let _ = writeln!(body, "  (no traffic)");
        }
        for row in &r.rows {
            let _ = writeln!(
                body,
                "  {:<40} {:>12} {:>14}",
                row.key,
                human_bytes(row.bytes),
                human_bps(row.bytes as f64 * 8.0 / 86_400.0)
            );
        }
        let _ = writeln!(body);
    }
    let health = client
        .query(
            "SELECT host(e.address), coalesce(e.name, '(unnamed)'),
                    coalesce(sum(h.packets), 0)::int8, coalesce(sum(h.flows), 0)::int8,
                    coalesce(sum(h.lost), 0)::int8, coalesce(sum(h.decode_errors), 0)::int8,
                    to_char(max(h.minute) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
             FROM exporters e LEFT JOIN exporter_health h ON h.exporter_id = e.id AND h.minute >= $1 AND h.minute < $2
             GROUP BY e.address, e.name ORDER BY e.address",
            &[&from, &now],
        )
        .await?;
    let _ = writeln!(body, "Exporters:");
    for r in &health {
        let (flows, lost): (i64, i64) = (r.get(3), r.get(4));
        let loss = if flows + lost > 0 {
            lost as f64 * 100.0 / (flows + lost) as f64
        } else {
            0.0
        };
        let _ = writeln!(
            body,
            "  {:<39} {:<20} {:>9} datagrams {:>10} flows, loss {loss:.2} %, {} decode error(s), last {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
            flows,
            r.get::<_, i64>(5),
            r.get::<_, Option<String>>(6).unwrap_or_else(|| "-".into())
        );
    }
    let alerts = during(client, from, now).await?;
    let _ = writeln!(body, "\nAlerts in these 24 hours: {}", alerts.len());
    for a in &alerts {
        let state = match a.cleared_at {
            Some(c) => format!("cleared {}", c.format("%H:%M")),
            None => "ACTIVE".to_string(),
        };
        let _ = writeln!(
            body,
            "  {} {:<8} {}: {}",
            a.started_at.format("%m-%d %H:%M"),
            state,
            a.rule,
            a.message
        );
    }
    let active = alerts.iter().filter(|a| a.cleared_at.is_none()).count();
    Ok(Message {
        from: crate::mail::sender(),
        to: config.site.admin_email.clone(),
        subject: format!(
            "[flowstage {}] daily summary: {}, {} active alert(s)",
            config.site.name,
            human_bytes(total.total.bytes),
            active
        ),
        body,
    })
}
