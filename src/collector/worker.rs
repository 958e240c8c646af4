//! Decode/aggregate workers. Each owns a [`Decoder`] (templates of the exporters routed
//! to it), an [`Aggregator`], its exporters' counters and the last sFlow interface
//! counters of its agents (to turn them into deltas), so the hot path takes no locks;
//! counters are published once a second.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ipnet::IpNet;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc::UnboundedSender;

use super::aggregate::Aggregator;
use super::batch::{CounterDelta, CounterRow};
use super::receive::RecvBatch;
use super::stats::{stats_for, ExporterKey, ExporterStats};
use super::writer::WriterMsg;
use crate::config::ExporterConfig;
use crate::decode::{
    decode_datagram_with_counters, Decoder, FlowRecord, InterfaceCounters, Limits, Protocol,
};

/// Exporter settings that SIGHUP reloads.
#[derive(Debug, Default)]
pub struct ExporterSettings {
    pub sampling_overrides: FxHashMap<IpAddr, u32>,
    pub allowed: Vec<IpNet>,
}

impl ExporterSettings {
    pub fn new(exporters: &[ExporterConfig], allowed: &[IpNet]) -> Self {
        ExporterSettings {
            sampling_overrides: exporters
                .iter()
                .filter_map(|e| e.sampling_rate.map(|r| (e.address, r)))
                .collect(),
            allowed: allowed.to_vec(),
        }
    }

    fn allows(&self, addr: &IpAddr) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|n| n.contains(addr))
    }
}

/// Settings shared with the signal handler: a generation counter makes the per-batch
/// check a single atomic load.
#[derive(Debug, Default)]
pub struct SharedSettings {
    pub current: RwLock<Arc<ExporterSettings>>,
    pub generation: AtomicU64,
}

impl SharedSettings {
    pub fn replace(&self, s: ExporterSettings) {
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(s);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// What a worker publishes each second.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub exporters: BTreeMap<ExporterKey, ExporterStats>,
    pub open_buckets: u64,
    pub clock_skewed_flows: u64,
    pub templates: u64,
}

#[derive(Debug)]
pub struct WorkerConfig {
    pub top_n: usize,
    pub max_keys: usize,
    pub grace_secs: u64,
    pub limits: Limits,
    pub batch_prefix: String,
    /// Where decoded flows are archived, when the archive is on.
    pub archive: Option<crate::archive::ArchiveSender>,
}

#[derive(Debug)]
pub struct Worker {
    decoder: Decoder,
    aggregator: Aggregator,
    stats: BTreeMap<ExporterKey, ExporterStats>,
    settings: Arc<SharedSettings>,
    local: Arc<ExporterSettings>,
    seen_generation: u64,
    grace_secs: u64,
    writer: UnboundedSender<WriterMsg>,
    report: Arc<Mutex<WorkerReport>>,
    records: Vec<FlowRecord>,
    archive: Option<crate::archive::ArchiveSender>,
    archive_buffer: Vec<crate::archive::ArchivedFlow>,
    /// sFlow counters of the current datagram.
    counters: Vec<InterfaceCounters>,
    /// The previous sFlow counters of each (agent, ifIndex), and when they arrived.
    last_counters: FxHashMap<(IpAddr, u32), (InterfaceCounters, i64)>,
    /// Counter rows for the next batch.
    counter_rows: Vec<CounterRow>,
}

/// Interfaces whose sFlow counters one worker remembers.
const MAX_COUNTER_INTERFACES: usize = 65_536;
/// Longest interval between two counter samples that still gives a delta; agents poll
/// every 20 to 30 seconds. Longer gaps, and uptime going backwards, start over.
const MAX_COUNTER_INTERVAL_MS: u64 = 3_600_000;

/// The increments from `prev` (received at `prev_ms`) to `cur` (received at `now_ms`),
/// or `None` when they cannot be trusted: the agent restarted (its uptime went
/// backwards), the samples are too far apart, octet counters are unknown, or the
/// octets imply more than twice the interface speed (a counter reset).
pub fn counter_delta(
    prev: &InterfaceCounters,
    prev_ms: i64,
    cur: &InterfaceCounters,
    now_ms: i64,
) -> Option<CounterDelta> {
    let interval_ms = if cur.uptime_ms != prev.uptime_ms {
        // Wrapping: a u32 of milliseconds wraps after 49.7 days of uptime.
        u64::from(cur.uptime_ms.wrapping_sub(prev.uptime_ms))
    } else {
        // Agents that send no uptime: the receive times.
        u64::try_from(now_ms - prev_ms).ok()?
    };
    if interval_ms == 0 || interval_ms > MAX_COUNTER_INTERVAL_MS {
        return None;
    }
    if [
        prev.in_octets,
        prev.out_octets,
        cur.in_octets,
        cur.out_octets,
    ]
    .contains(&u64::MAX)
    {
        return None;
    }
    // A 64-bit octet counter does not wrap in practice (2^64 bytes); one that went
    // backwards was reset (cleared counters, a recreated interface), whatever the speed.
    if cur.in_octets < prev.in_octets || cur.out_octets < prev.out_octets {
        return None;
    }
    let in_octets = cur.in_octets - prev.in_octets;
    let out_octets = cur.out_octets - prev.out_octets;
    if cur.speed_bps > 0 && cur.speed_bps < u64::MAX {
        let limit = u128::from(cur.speed_bps) * u128::from(interval_ms) * 2 / 8000;
        if u128::from(in_octets) > limit || u128::from(out_octets) > limit {
            return None;
        }
    }
    let sum = |pairs: &[(u32, u32)]| -> Option<u64> {
        pairs.iter().try_fold(0u64, |acc, &(p, c)| {
            (p != u32::MAX && c != u32::MAX).then(|| acc + u64::from(c.wrapping_sub(p)))
        })
    };
    Some(CounterDelta {
        interval_ms,
        in_octets,
        out_octets,
        in_packets: sum(&[
            (prev.in_unicast, cur.in_unicast),
            (prev.in_multicast, cur.in_multicast),
            (prev.in_broadcast, cur.in_broadcast),
        ]),
        out_packets: sum(&[
            (prev.out_unicast, cur.out_unicast),
            (prev.out_multicast, cur.out_multicast),
            (prev.out_broadcast, cur.out_broadcast),
        ]),
        in_errors: sum(&[(prev.in_errors, cur.in_errors)]),
        out_errors: sum(&[(prev.out_errors, cur.out_errors)]),
    })
}

/// Flows a worker hands the archive at once.
const ARCHIVE_BATCH: usize = 8192;

/// Largest sampling rate accepted, from an exporter or the configuration.
pub const MAX_SAMPLING_RATE: u32 = 1 << 24;
/// Largest counts one flow record may carry after sampling (about 9 PB and 10^15
/// packets). Anything above is a corrupt record: counted as `implausible_record`, not
/// stored, so it cannot poison a bucket's sums or a batch's COPY.
const MAX_SCALED_BYTES: u64 = 1 << 53;
const MAX_SCALED_PACKETS: u64 = 1 << 50;
const MAX_FLOWS_PER_RECORD: u64 = 1 << 32;

fn plausible(r: &FlowRecord) -> bool {
    r.sampling_rate <= MAX_SAMPLING_RATE
        && r.scaled_bytes() <= MAX_SCALED_BYTES
        && r.scaled_packets() <= MAX_SCALED_PACKETS
        && r.flows <= MAX_FLOWS_PER_RECORD
}

fn protocol_of(datagram: &[u8]) -> Option<Protocol> {
    match datagram.get(..2) {
        Some([0, 5]) => Some(Protocol::NetflowV5),
        Some([0, 9]) => Some(Protocol::NetflowV9),
        Some([0, 10]) => Some(Protocol::Ipfix),
        Some([0, 0]) if datagram.get(..4) == Some(&[0, 0, 0, 5]) => Some(Protocol::Sflow),
        _ => None,
    }
}

impl Worker {
    pub fn new(
        cfg: WorkerConfig,
        settings: Arc<SharedSettings>,
        writer: UnboundedSender<WriterMsg>,
        report: Arc<Mutex<WorkerReport>>,
    ) -> Self {
        let local = settings
            .current
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        Worker {
            decoder: Decoder::new(cfg.limits),
            aggregator: Aggregator::new(cfg.top_n, cfg.max_keys, cfg.batch_prefix),
            stats: BTreeMap::new(),
            seen_generation: settings.generation.load(Ordering::Acquire),
            settings,
            local,
            grace_secs: cfg.grace_secs,
            writer,
            report,
            records: Vec::with_capacity(64),
            archive: cfg.archive,
            archive_buffer: Vec::new(),
            counters: Vec::new(),
            last_counters: FxHashMap::default(),
            counter_rows: Vec::new(),
        }
    }

    /// Process batches until every receive thread has gone, then finish all buckets.
    pub fn run(mut self, rx: Receiver<RecvBatch>, queued_bytes: &AtomicUsize) {
        let mut last_tick = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(batch) => {
                    self.process(&batch);
                    queued_bytes.fetch_sub(batch.data.len(), Ordering::Relaxed);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                self.tick(chrono::Utc::now().timestamp_millis(), false);
            }
        }
        self.tick(chrono::Utc::now().timestamp_millis(), true);
    }

    pub fn process(&mut self, batch: &RecvBatch) {
        let generation = self.settings.generation.load(Ordering::Acquire);
        if generation != self.seen_generation {
            self.seen_generation = generation;
            if let Ok(s) = self.settings.current.read() {
                self.local = s.clone();
            }
        }
        let now_ms = batch.received_ms;
        for (addr, datagram) in batch.datagrams() {
            self.datagram(addr, datagram, now_ms);
        }
    }

    fn datagram(&mut self, addr: IpAddr, datagram: &[u8], now_ms: i64) {
        if !self.local.allows(&addr) {
            let key = ExporterKey {
                address: addr,
                protocol: protocol_of(datagram),
                source_id: None,
            };
            let st = stats_for(&mut self.stats, key);
            st.seen(now_ms);
            st.not_allowed += 1;
            return;
        }
        self.records.clear();
        self.counters.clear();
        match decode_datagram_with_counters(
            &mut self.decoder,
            addr,
            now_ms,
            datagram,
            &mut self.records,
            &mut self.counters,
        ) {
            Ok(summary) => {
                let key = ExporterKey {
                    address: addr,
                    protocol: Some(summary.protocol),
                    source_id: Some(summary.source_id),
                };
                let st = stats_for(&mut self.stats, key);
                st.seen(now_ms);
                st.packets += 1;
                st.record_packet(&summary);
                let rate_override = self.local.sampling_overrides.get(&addr).copied();
                let before = self.records.len();
                self.records.retain_mut(|r| {
                    if let Some(rate) = rate_override {
                        r.sampling_rate = rate;
                    }
                    plausible(r)
                });
                let implausible = (before - self.records.len()) as u64;
                if implausible > 0 {
                    *st.errors.entry("implausible_record").or_default() += implausible;
                }
                for r in &self.records {
                    st.flows = st.flows.saturating_add(r.flows);
                    st.bytes = st.bytes.saturating_add(r.scaled_bytes());
                }
                self.aggregator.add_batch(addr, &self.records, now_ms);
                for i in 0..self.counters.len() {
                    let c = self.counters[i];
                    self.interface_counters(addr, c, now_ms);
                }
                if let Some(archive) = &self.archive {
                    self.archive_buffer.extend(self.records.iter().map(|r| {
                        crate::archive::ArchivedFlow {
                            exporter: addr,
                            record: *r,
                        }
                    }));
                    if self.archive_buffer.len() >= ARCHIVE_BATCH {
                        archive.send(std::mem::replace(
                            &mut self.archive_buffer,
                            Vec::with_capacity(ARCHIVE_BATCH),
                        ));
                    }
                }
            }
            Err(e) => {
                let key = ExporterKey {
                    address: addr,
                    protocol: protocol_of(datagram),
                    source_id: None,
                };
                let st = stats_for(&mut self.stats, key);
                st.seen(now_ms);
                st.packets += 1;
                *st.errors.entry(e.kind()).or_default() += 1;
                tracing::debug!(exporter = %addr, "dropping datagram: {e}");
            }
        }
    }

    /// Remember an sFlow counter sample and queue its row (with the delta from the
    /// previous sample of the same interface, when there is a trustworthy one).
    fn interface_counters(&mut self, exporter: IpAddr, c: InterfaceCounters, now_ms: i64) {
        let key = (exporter, c.ifindex);
        let previous = self.last_counters.get(&key);
        let delta = previous.and_then(|(prev, prev_ms)| counter_delta(prev, *prev_ms, &c, now_ms));
        // Rows are keyed by time per interface: two samples of one interface received
        // in the same batch (the same receive time) still get a row each.
        let time_ms = match previous {
            Some((_, prev_ms)) if *prev_ms >= now_ms => prev_ms + 1,
            _ => now_ms,
        };
        if self.last_counters.len() >= MAX_COUNTER_INTERFACES
            && !self.last_counters.contains_key(&key)
        {
            let horizon = now_ms - MAX_COUNTER_INTERVAL_MS as i64;
            self.last_counters.retain(|_, (_, at)| *at >= horizon);
        }
        if self.last_counters.len() < MAX_COUNTER_INTERFACES
            || self.last_counters.contains_key(&key)
        {
            self.last_counters.insert(key, (c, time_ms));
        }
        self.counter_rows.push(CounterRow {
            time_ms,
            exporter,
            ifindex: c.ifindex,
            speed_bps: c.speed_bps,
            oper_up: c.oper_up,
            delta,
        });
    }

    /// Once a second (and at the end): finish due buckets, age held data, publish.
    pub fn tick(&mut self, now_ms: i64, final_flush: bool) {
        if let Some(archive) = &self.archive {
            if !self.archive_buffer.is_empty() {
                archive.send(std::mem::take(&mut self.archive_buffer));
            }
        }
        for expired in self
            .decoder
            .take_expired(if final_flush { i64::MAX } else { now_ms })
        {
            stats_for(&mut self.stats, expired.scope.into()).expired_sets += expired.sets;
        }
        let due = if final_flush { None } else { Some(now_ms) };
        let mut batch = self.aggregator.flush(due, self.grace_secs);
        if !self.counter_rows.is_empty() {
            batch
                .get_or_insert_with(|| self.aggregator.empty_batch())
                .counters
                .append(&mut self.counter_rows);
        }
        if let Some(batch) = batch {
            if self.writer.send(WriterMsg::Batch(batch)).is_err() {
                tracing::error!("database writer has stopped; a finished batch was lost");
            }
        }
        for st in self.stats.values_mut() {
            st.held_sets = 0;
        }
        for (scope, n) in self.decoder.pending_sets() {
            stats_for(&mut self.stats, scope.into()).held_sets += n as u64;
        }
        if let Ok(mut r) = self.report.lock() {
            r.exporters.clone_from(&self.stats);
            r.open_buckets = self.aggregator.open_buckets() as u64;
            r.clock_skewed_flows = self.aggregator.clock_skewed_flows;
            r.templates = self.decoder.template_count() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(uptime_ms: u32, in_octets: u64, out_octets: u64, packets: u32) -> InterfaceCounters {
        InterfaceCounters {
            uptime_ms,
            ifindex: 3,
            speed_bps: 1_000_000_000,
            oper_up: true,
            in_octets,
            out_octets,
            in_unicast: packets,
            in_multicast: 1,
            in_broadcast: u32::MAX,
            out_unicast: packets,
            out_multicast: 2,
            out_broadcast: 3,
            in_errors: 7,
            out_errors: u32::MAX,
            ..InterfaceCounters::default()
        }
    }

    #[test]
    fn deltas_wrap_and_unknown_counters_are_none() {
        let a = sample(10_000, 1_000_000, 5_000, u32::MAX - 9);
        let b = sample(40_000, 1_000_500, 8_000, 20);
        assert_eq!(
            counter_delta(&a, 0, &b, 30_000),
            Some(CounterDelta {
                interval_ms: 30_000,
                in_octets: 500,
                out_octets: 3_000,
                in_packets: None,
                out_packets: Some(30),
                in_errors: Some(0),
                out_errors: None,
            })
        );
    }

    #[test]
    fn resets_and_restarts_give_no_delta() {
        let a = sample(10_000, 1_000_000, 1_000, 1);
        // Counters back to near zero on a 1 Gb/s link: more than twice line rate.
        assert_eq!(
            counter_delta(&a, 0, &sample(40_000, 10, 2_000, 2), 30_000),
            None
        );
        // 64-bit octets going backwards are a reset even where the speed is unknown
        // (a wrap would take 2^64 bytes).
        let mut slow = a;
        slow.speed_bps = 0;
        let mut cleared = sample(40_000, 500, 2_000, 2);
        cleared.speed_bps = 0;
        assert_eq!(counter_delta(&slow, 0, &cleared, 30_000), None);
        // Uptime going backwards: the agent restarted.
        assert_eq!(
            counter_delta(&a, 0, &sample(5_000, 2_000_000, 2_000, 2), 30_000),
            None
        );
        // Over an hour apart.
        assert_eq!(
            counter_delta(&a, 0, &sample(3_700_000, 2_000_000, 2_000, 2), 0),
            None
        );
        // Twice line rate exactly is still plausible: 1 Gb/s * 30 s * 2 / 8.
        let full = sample(40_000, 1_000_000 + 7_500_000_000, 1_000, 1);
        assert_eq!(
            counter_delta(&a, 0, &full, 30_000).map(|d| d.in_octets),
            Some(7_500_000_000)
        );
        // No uptime from the agent: receive times measure the interval.
        let mut a0 = a;
        a0.uptime_ms = 0;
        let mut b0 = sample(0, 1_001_000, 1_000, 1);
        b0.uptime_ms = 0;
        assert_eq!(
            counter_delta(&a0, 1_000, &b0, 21_000).map(|d| (d.interval_ms, d.in_octets)),
            Some((20_000, 1_000))
        );
    }
}
