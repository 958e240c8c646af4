//! The database writer: takes finished batches, writes each in one transaction with
//! COPY (sFlow interface counters with `INSERT ... ON CONFLICT DO NOTHING`), and records
//! its id so a replay or retry is a no-op. While PostgreSQL is
//! unreachable, batches go to the [`Spool`] and are replayed in order when it is back.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::{Client, Transaction};

use super::batch::{Batch, CounterRow, Dimension, Key};
use super::spool::{Spool, SpoolOutcome};
use super::stats::GlobalStats;
use crate::config::ExporterConfig;
use crate::db;

#[derive(Debug)]
pub enum WriterMsg {
    Batch(Batch),
    /// Exporter names from the configuration (start and SIGHUP), and the name
    /// precedence (`names.precedence`) they are shown by.
    Exporters(Vec<ExporterConfig>, Vec<String>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    Duplicate,
}

#[derive(Debug)]
pub struct Writer {
    url: String,
    spool: Spool,
    client: Option<Client>,
    stats: Arc<Mutex<GlobalStats>>,
    ensured_days: HashSet<i64>,
    names: Option<(Vec<ExporterConfig>, Vec<String>)>,
    next_attempt: Instant,
    backoff: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const WRITE_TIMEOUT: Duration = Duration::from_secs(180);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Writer {
    pub fn new(url: String, spool: Spool, stats: Arc<Mutex<GlobalStats>>) -> Self {
        if let Ok(mut g) = stats.lock() {
            g.spool_bytes = spool.bytes();
        }
        Writer {
            url,
            spool,
            client: None,
            stats,
            ensured_days: HashSet::new(),
            names: None,
            next_attempt: Instant::now(),
            backoff: MIN_BACKOFF,
        }
    }

    fn stat(&self, f: impl FnOnce(&mut GlobalStats)) {
        if let Ok(mut g) = self.stats.lock() {
            f(&mut g);
        }
    }

    /// Run until the channel closes and everything received is written or spooled.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
        let mut queue: VecDeque<Batch> = VecDeque::new();
        let mut closed = false;
        let mut was_down = false;
        loop {
            let idle = queue.is_empty() && self.spool.is_empty() && self.names.is_none();
            if !closed && (idle || self.client.is_none()) {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(m) => self.accept(m, &mut queue),
                        None => closed = true,
                    },
                    _ = tokio::time::sleep_until(self.next_attempt), if !idle => {}
                }
            }
            while let Ok(m) = rx.try_recv() {
                self.accept(m, &mut queue);
            }
            if closed
                && queue.is_empty()
                && (self.spool.is_empty() || self.client.is_none())
                && self.names.is_none()
            {
                break;
            }
            if self.client.is_none() && (Instant::now() >= self.next_attempt || closed) {
                match self.connect().await {
                    Ok(()) => {
                        if was_down {
                            tracing::info!("database reachable again; replaying the spool");
                        }
                        was_down = false;
                    }
                    Err(e) => {
                        if !was_down {
                            tracing::warn!("database unavailable, spooling batches: {e:#}");
                        }
                        was_down = true;
                        self.back_off();
                    }
                }
            }
            if self.client.is_some() {
                self.drain(&mut queue).await;
            }
            if self.client.is_none() {
                while let Some(b) = queue.pop_front() {
                    self.spool_batch(&b);
                }
                if closed {
                    break;
                }
            }
            self.stat(|g| {
                g.database_up = self.client.is_some();
                g.spool_bytes = self.spool.bytes();
            });
        }
        self.stat(|g| g.spool_bytes = self.spool.bytes());
    }

    fn accept(&mut self, msg: WriterMsg, queue: &mut VecDeque<Batch>) {
        match msg {
            WriterMsg::Batch(b) => queue.push_back(b),
            WriterMsg::Exporters(list, precedence) => self.names = Some((list, precedence)),
        }
    }

    /// Connect and apply pending migrations.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        let mut client = db::connect(&self.url).await?;
        db::migrate(&mut client).await?;
        self.ensured_days.clear();
        self.client = Some(client);
        Ok(())
    }

    /// Spool first (it is older), then the queue; on a connection failure the rest waits.
    async fn drain(&mut self, queue: &mut VecDeque<Batch>) {
        if let Some(names) = self.names.take() {
            if let Err(e) = self.sync_names(&names).await {
                tracing::warn!("updating exporter names: {e:#}");
                self.names = Some(names);
                self.lost_connection();
                return;
            }
        }
        let entries = match self.spool.entries() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("{e:#}");
                Vec::new()
            }
        };
        for (_, path) in entries {
            let batch = match self.spool.read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("{e:#}; moving it aside");
                    let _ = self.spool.reject(&path);
                    continue;
                }
            };
            match self.write(&batch).await {
                Ok(outcome) => {
                    let _ = self.spool.remove(&path);
                    self.stored(outcome, true);
                }
                Err(e) if !is_data_error(&e) => {
                    tracing::warn!("database write failed, keeping the spool: {e:#}");
                    self.lost_connection();
                    return;
                }
                Err(e) => {
                    let to = self.spool.reject(&path);
                    self.stat(|g| {
                        g.batches_dropped += 1;
                        g.flows_dropped += batch.flows();
                    });
                    tracing::error!(
                        "database refused spooled batch {}: {e:#}; moved to {to:?}",
                        batch.id
                    );
                }
            }
        }
        while let Some(batch) = queue.pop_front() {
            match self.write(&batch).await {
                Ok(outcome) => self.stored(outcome, false),
                Err(e) if !is_data_error(&e) => {
                    tracing::warn!("database write failed, spooling: {e:#}");
                    queue.push_front(batch);
                    self.lost_connection();
                    return;
                }
                Err(e) => {
                    // Kept on disk: the spool retries once more and then sets it aside.
                    tracing::error!(
                        "database refused batch {} ({} flows): {e:#}",
                        batch.id,
                        batch.flows()
                    );
                    self.spool_batch(&batch);
                }
            }
        }
    }

    /// A successful write: the backoff starts over, and the counters say what happened.
    fn stored(&mut self, outcome: WriteOutcome, replayed: bool) {
        self.backoff = MIN_BACKOFF;
        self.stat(|g| {
            g.batches_replayed += u64::from(replayed);
            match outcome {
                WriteOutcome::Written => g.batches_written += 1,
                WriteOutcome::Duplicate => g.batches_duplicate += 1,
            }
        });
    }

    /// Drop the connection and wait before the next attempt, so a database that accepts
    /// connections but fails every write is not hammered.
    fn lost_connection(&mut self) {
        self.client = None;
        self.back_off();
    }

    fn back_off(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn spool_batch(&mut self, batch: &Batch) {
        match self.spool.push(batch) {
            Ok(SpoolOutcome::Stored) => self.stat(|g| g.batches_spooled += 1),
            Ok(SpoolOutcome::Full) => {
                tracing::error!(
                    "SPOOL FULL ({} bytes): dropping batch {} with {} flows; free space or raise collector.spool_max_bytes",
                    self.spool.bytes(),
                    batch.id,
                    batch.flows()
                );
                self.stat(|g| {
                    g.batches_dropped += 1;
                    g.flows_dropped += batch.flows();
                });
            }
            Err(e) => {
                tracing::error!(
                    "SPOOL WRITE FAILED: dropping batch {} with {} flows: {e:#}",
                    batch.id,
                    batch.flows()
                );
                self.stat(|g| {
                    g.batches_dropped += 1;
                    g.flows_dropped += batch.flows();
                });
            }
        }
    }

    /// Names from `[[exporter]]` in the configuration count as file names.
    async fn sync_names(
        &mut self,
        (names, precedence): &(Vec<ExporterConfig>, Vec<String>),
    ) -> anyhow::Result<()> {
        let Some(client) = self.client.as_ref() else {
            return Ok(());
        };
        for e in names.iter().filter(|e| e.name.is_some()) {
            client
                .execute(
                    "INSERT INTO exporters (address, file_name) VALUES ($1, $2)
                     ON CONFLICT (address) DO UPDATE SET file_name = EXCLUDED.file_name
                     WHERE exporters.file_name IS DISTINCT FROM EXCLUDED.file_name",
                    &[&e.address, &e.name],
                )
                .await?;
        }
        client
            .execute("SELECT flowstage_apply_names($1)", &[precedence])
            .await?;
        Ok(())
    }

    /// Write one batch atomically; a batch already stored is skipped. A write that
    /// takes longer than [`WRITE_TIMEOUT`] counts as a lost connection.
    pub async fn write(&mut self, batch: &Batch) -> anyhow::Result<WriteOutcome> {
        tokio::time::timeout(WRITE_TIMEOUT, self.write_unbounded(batch))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "writing batch {} took longer than {WRITE_TIMEOUT:?}",
                    batch.id
                )
            })?
    }

    async fn write_unbounded(&mut self, batch: &Batch) -> anyhow::Result<WriteOutcome> {
        let client = self.client.as_mut().context("not connected")?;
        let tx = client.transaction().await?;
        let fresh = tx
            .execute(
                "INSERT INTO ingest_batches (id, rows, flows) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
                &[&batch.id, &(batch.rows() as i32), &(batch.flows() as i64)],
            )
            .await?;
        if fresh == 0 {
            return Ok(WriteOutcome::Duplicate);
        }
        let mut new_days = Vec::new();
        for day in batch
            .buckets
            .iter()
            .map(|b| b.minute.div_euclid(86_400))
            .collect::<HashSet<_>>()
        {
            if !self.ensured_days.contains(&day) {
                let date = chrono::DateTime::from_timestamp(day * 86_400, 0)
                    .context("bucket time out of range")?
                    .format("%Y-%m-%d")
                    .to_string();
                tx.execute("SELECT flowstage_ensure_day($1::text::date)", &[&date])
                    .await?;
                new_days.push(day);
            }
        }
        // First and last seen come from the flows' own minutes, so a batch replayed
        // after an outage does not move them to the replay time.
        let mut ids = HashMap::new();
        let mut seen: HashMap<IpAddr, BTreeMap<i64, (i64, i64)>> = HashMap::new();
        for b in &batch.buckets {
            let span = seen
                .entry(b.exporter)
                .or_default()
                .entry(i64::from(b.ifindex))
                .or_insert((b.minute, b.minute));
            *span = (span.0.min(b.minute), span.1.max(b.minute + 60));
        }
        for (addr, interfaces) in seen {
            let time = |secs: i64| {
                chrono::DateTime::from_timestamp(secs, 0).context("bucket time out of range")
            };
            let first = time(interfaces.values().map(|s| s.0).min().unwrap_or_default())?;
            let last = time(interfaces.values().map(|s| s.1).max().unwrap_or_default())?;
            let id = register_exporter(&tx, addr, first, last).await?;
            let ifindexes: Vec<i64> = interfaces.keys().copied().collect();
            let firsts = interfaces
                .values()
                .map(|s| time(s.0))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let lasts = interfaces
                .values()
                .map(|s| time(s.1))
                .collect::<anyhow::Result<Vec<_>>>()?;
            tx.execute(
                "INSERT INTO interfaces (exporter_id, ifindex, first_seen, last_seen)
                 SELECT $1, i, f, l FROM unnest($2::bigint[], $3::timestamptz[], $4::timestamptz[]) AS u(i, f, l)
                 ON CONFLICT (exporter_id, ifindex) DO UPDATE SET
                     first_seen = least(interfaces.first_seen, EXCLUDED.first_seen),
                     last_seen = greatest(interfaces.last_seen, EXCLUDED.last_seen)",
                &[&id, &ifindexes, &firsts, &lasts],
            )
            .await?;
            ids.insert(addr, id);
        }
        copy_batch(&tx, batch, &ids).await?;
        write_counters(&tx, &batch.counters).await?;
        // Minutes that arrive after their hour was rolled up mark it for recomputation.
        if let (Some(first), Some(last)) = (
            batch.buckets.iter().map(|b| b.minute).min(),
            batch.buckets.iter().map(|b| b.minute).max(),
        ) {
            let time = |secs: i64| {
                chrono::DateTime::from_timestamp(secs, 0).context("bucket time out of range")
            };
            tx.execute(
                "SELECT flowstage_minutes_written($1, $2)",
                &[&time(first)?, &time(last)?],
            )
            .await?;
        }
        tx.commit().await?;

        self.ensured_days.extend(new_days);
        Ok(WriteOutcome::Written)
    }
}

/// Whether the database refused the batch's data itself (SQLSTATE classes 22, data
/// exception, and 23, integrity violation): retrying cannot help, so the batch is set
/// aside. Everything else (connection loss, shutdown, permissions, a missing table) is
/// treated as an outage: the batch stays spooled and is retried, never dropped.
fn is_data_error(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .filter_map(|pg| pg.code())
        .any(|code| code.code().starts_with("22") || code.code().starts_with("23"))
}

/// A counter as a `bigint`: saturated sums stay at the column's maximum instead of
/// making PostgreSQL refuse the whole batch.
fn db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The exporter's id, registering it (or widening its first and last seen) as needed.
async fn register_exporter(
    tx: &Transaction<'_>,
    address: IpAddr,
    first: chrono::DateTime<chrono::Utc>,
    last: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<i32> {
    Ok(tx
        .query_one(
            "INSERT INTO exporters (address, first_seen, last_seen) VALUES ($1, $2, $3)
             ON CONFLICT (address) DO UPDATE SET
                 first_seen = least(exporters.first_seen, EXCLUDED.first_seen),
                 last_seen = greatest(exporters.last_seen, EXCLUDED.last_seen)
             RETURNING id",
            &[&address, &first, &last],
        )
        .await?
        .get(0))
}

/// sFlow counter rows: the agent is registered as an exporter and each interface with
/// its measured speed and status (a measured speed replaces a configured one, as
/// `flowstage_apply_names` does), and the deltas go to `interface_counters`.
async fn write_counters(tx: &Transaction<'_>, rows: &[CounterRow]) -> anyhow::Result<()> {
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).context("counter sample time out of range")
    };
    let mut by_exporter: BTreeMap<IpAddr, Vec<&CounterRow>> = BTreeMap::new();
    for r in rows {
        by_exporter.entry(r.exporter).or_default().push(r);
    }
    for (addr, rows) in by_exporter {
        let first = time(rows.iter().map(|r| r.time_ms).min().unwrap_or_default())?;
        let last = time(rows.iter().map(|r| r.time_ms).max().unwrap_or_default())?;
        let id = register_exporter(tx, addr, first, last).await?;
        // The latest sample of each interface says its speed and status.
        let mut latest: BTreeMap<u32, (&CounterRow, i64)> = BTreeMap::new();
        for r in &rows {
            let e = latest.entry(r.ifindex).or_insert((r, r.time_ms));
            e.1 = e.1.min(r.time_ms);
            if r.time_ms >= e.0.time_ms {
                e.0 = r;
            }
        }
        let status = |up: bool| if up { 1i16 } else { 2 };
        let speed = |bps: u64| (bps > 0 && bps < u64::MAX).then(|| db(bps));
        let ifindexes: Vec<i64> = latest.keys().map(|&i| i64::from(i)).collect();
        let firsts = latest
            .values()
            .map(|(_, f)| time(*f))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let lasts = latest
            .values()
            .map(|(r, _)| time(r.time_ms))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let speeds: Vec<Option<i64>> = latest.values().map(|(r, _)| speed(r.speed_bps)).collect();
        let statuses: Vec<i16> = latest.values().map(|(r, _)| status(r.oper_up)).collect();
        tx.execute(
            "INSERT INTO interfaces (exporter_id, ifindex, first_seen, last_seen, measured_speed_bps, speed_bps, oper_status)
             SELECT $1, i, f, l, s, s, o FROM unnest($2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::bigint[], $6::smallint[]) AS u(i, f, l, s, o)
             ON CONFLICT (exporter_id, ifindex) DO UPDATE SET
                 first_seen = least(interfaces.first_seen, EXCLUDED.first_seen),
                 last_seen = greatest(interfaces.last_seen, EXCLUDED.last_seen),
                 measured_speed_bps = coalesce(EXCLUDED.measured_speed_bps, interfaces.measured_speed_bps),
                 speed_bps = coalesce(EXCLUDED.measured_speed_bps, interfaces.speed_bps),
                 oper_status = EXCLUDED.oper_status",
            &[&id, &ifindexes, &firsts, &lasts, &speeds, &statuses],
        )
        .await?;

        let deltas: Vec<(&CounterRow, _)> = rows
            .iter()
            .filter_map(|r| r.delta.map(|d| (*r, d)))
            .collect();
        if deltas.is_empty() {
            continue;
        }
        let times = deltas
            .iter()
            .map(|(r, _)| time(r.time_ms))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let col = |f: &dyn Fn(&super::batch::CounterDelta) -> Option<u64>| -> Vec<Option<i64>> {
            deltas.iter().map(|(_, d)| f(d).map(db)).collect()
        };
        let ifs: Vec<i64> = deltas.iter().map(|(r, _)| i64::from(r.ifindex)).collect();
        let secs: Vec<f64> = deltas
            .iter()
            .map(|(_, d)| d.interval_ms as f64 / 1000.0)
            .collect();
        let statuses: Vec<i16> = deltas.iter().map(|(r, _)| status(r.oper_up)).collect();
        tx.execute(
            "INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets,
                                             in_packets, out_packets, in_errors, out_errors, oper_status)
             SELECT t, $1, i, 'sflow', s, io, oo, ip, op, ie, oe, st
             FROM unnest($2::timestamptz[], $3::bigint[], $4::float8[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::smallint[])
                  AS u(t, i, s, io, oo, ip, op, ie, oe, st)
             ON CONFLICT DO NOTHING",
            &[
                &id,
                &times,
                &ifs,
                &secs,
                &col(&|d| Some(d.in_octets)),
                &col(&|d| Some(d.out_octets)),
                &col(&|d| d.in_packets),
                &col(&|d| d.out_packets),
                &col(&|d| d.in_errors),
                &col(&|d| d.out_errors),
                &statuses,
            ],
        )
        .await?;
    }
    Ok(())
}

/// COPY text of every table for one batch.
#[derive(Default)]
struct CopyText {
    totals: String,
    as_: String,
    ip: String,
    port: String,
    proto: String,
}

async fn copy_batch(
    tx: &Transaction<'_>,
    batch: &Batch,
    ids: &HashMap<IpAddr, i32>,
) -> anyhow::Result<()> {
    let mut t = CopyText::default();
    for b in &batch.buckets {
        let Some(id) = ids.get(&b.exporter) else {
            continue;
        };
        let minute = chrono::DateTime::from_timestamp(b.minute, 0)
            .context("bucket time out of range")?
            .format("%Y-%m-%d %H:%M:%S+00")
            .to_string();
        let head = format!("{minute}\t{id}\t{}\t{}", b.ifindex, b.direction as i16);
        for (rate, tot) in &b.totals {
            let _ = writeln!(
                t.totals,
                "{head}\t{rate}\t{}\t{}\t{}",
                db(tot.bytes),
                db(tot.packets),
                db(tot.flows)
            );
        }
        for d in &b.dimensions {
            let side = d.dimension.side();
            let out = match d.dimension {
                Dimension::SrcAs | Dimension::DstAs => &mut t.as_,
                Dimension::SrcIp | Dimension::DstIp => &mut t.ip,
                Dimension::SrcPort | Dimension::DstPort => &mut t.port,
                Dimension::Proto => &mut t.proto,
            };
            for (key, tot) in &d.rows {
                let key = match key {
                    Key::As(v) => v.to_string(),
                    Key::Ip(v) => v.to_string(),
                    Key::Port(v) => v.to_string(),
                    Key::Proto(v) => v.to_string(),
                    Key::Other => "\\N".to_string(),
                };
                if d.dimension == Dimension::Proto {
                    let _ = writeln!(
                        out,
                        "{head}\t{key}\t{}\t{}\t{}",
                        db(tot.bytes),
                        db(tot.packets),
                        db(tot.flows)
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{head}\t{side}\t{key}\t{}\t{}\t{}",
                        db(tot.bytes),
                        db(tot.packets),
                        db(tot.flows)
                    );
                }
            }
        }
    }
    let tables = [
        ("flow_totals (minute, exporter_id, ifindex, direction, sampling_rate, bytes, packets, flows)", t.totals),
        ("flow_as (minute, exporter_id, ifindex, direction, side, asn, bytes, packets, flows)", t.as_),
        ("flow_ip (minute, exporter_id, ifindex, direction, side, addr, bytes, packets, flows)", t.ip),
        ("flow_port (minute, exporter_id, ifindex, direction, side, port, bytes, packets, flows)", t.port),
        ("flow_proto (minute, exporter_id, ifindex, direction, proto, bytes, packets, flows)", t.proto),
    ];
    for (table, text) in tables {
        if text.is_empty() {
            continue;
        }
        let sink = tx.copy_in(&format!("COPY {table} FROM STDIN")).await?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(text)).await?;
        sink.finish().await?;
    }
    Ok(())
}
