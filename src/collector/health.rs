//! Per-exporter health per minute (datagrams, flows, flows lost to sequence gaps,
//! decode errors), written to `exporter_health` every few seconds so alert rules and
//! the daily summary read history from the database instead of scraping the metrics
//! endpoint. It has its own connection: a slow or absent database never holds up the
//! flow writer, and deltas not yet written are kept (one row per exporter) until the
//! database is back.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::stats::Snapshot;

/// How often deltas are written.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Cumulative counters of one exporter address, summed over protocols and source ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub flows: u64,
    pub lost: u64,
    pub decode_errors: u64,
}

impl Totals {
    fn minus(self, before: Totals) -> Totals {
        Totals {
            packets: self.packets.saturating_sub(before.packets),
            flows: self.flows.saturating_sub(before.flows),
            lost: self.lost.saturating_sub(before.lost),
            decode_errors: self.decode_errors.saturating_sub(before.decode_errors),
        }
    }

    fn plus(self, other: Totals) -> Totals {
        Totals {
            packets: self.packets + other.packets,
            flows: self.flows + other.flows,
            lost: self.lost + other.lost,
            decode_errors: self.decode_errors + other.decode_errors,
        }
    }

    fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// The snapshot's counters per exporter address (the overflow bucket left out).
pub fn per_address(s: &Snapshot) -> BTreeMap<IpAddr, Totals> {
    let mut out: BTreeMap<IpAddr, Totals> = BTreeMap::new();
    for (k, v) in &s.exporters {
        if *k == super::stats::ExporterKey::OVERFLOW {
            continue;
        }
        let t = out.entry(k.address).or_default();
        *t = t.plus(Totals {
            packets: v.packets,
            flows: v.flows,
            lost: v.lost_flows(k.protocol),
            decode_errors: v.errors_total(),
        });
    }
    out
}

/// Write deltas of `snapshot()` every [`INTERVAL`] until the runtime stops.
pub async fn run(url: String, snapshot: impl Fn() -> Snapshot + Send + 'static) {
    let mut seen: BTreeMap<IpAddr, Totals> = BTreeMap::new();
    let mut pending: BTreeMap<IpAddr, Totals> = BTreeMap::new();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut timer = tokio::time::interval(INTERVAL);
    loop {
        timer.tick().await;
        let now = per_address(&snapshot());
        for (address, totals) in &now {
            let delta = totals.minus(seen.get(address).copied().unwrap_or_default());
            if !delta.is_zero() {
                let p = pending.entry(*address).or_default();
                *p = p.plus(delta);
            }
        }
        seen = now;
        if pending.is_empty() {
            continue;
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = crate::db::connect(&url).await.ok();
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        match write(c, &pending).await {
            Ok(()) => pending.clear(),
            Err(e) => {
                tracing::debug!("exporter health not written yet: {e:#}");
                client = None;
            }
        }
    }
}

async fn write(
    client: &mut tokio_postgres::Client,
    pending: &BTreeMap<IpAddr, Totals>,
) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    for (address, t) in pending {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        // A datagram that only failed to decode still registers its exporter.
        tx.execute(
            "INSERT INTO exporters (address) VALUES ($1) ON CONFLICT (address) DO NOTHING",
            &[address],
        )
        .await?;
        tx.execute(
            "INSERT INTO exporter_health (minute, exporter_id, packets, flows, lost, decode_errors)
             SELECT date_trunc('minute', now()), id, $2, $3, $4, $5 FROM exporters WHERE address = $1
             ON CONFLICT (exporter_id, minute) DO UPDATE SET
                 packets = exporter_health.packets + EXCLUDED.packets,
                 flows = exporter_health.flows + EXCLUDED.flows,
                 lost = exporter_health.lost + EXCLUDED.lost,
                 decode_errors = exporter_health.decode_errors + EXCLUDED.decode_errors",
            &[address, &n(t.packets), &n(t.flows), &n(t.lost), &n(t.decode_errors)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
