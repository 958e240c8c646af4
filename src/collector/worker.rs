//! Decode/aggregate workers. Each owns a [`Decoder`] (templates of the exporters routed
//! to it), an [`Aggregator`] and its exporters' counters, so the hot path takes no
//! locks; counters are published once a second.

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
use super::receive::RecvBatch;
use super::stats::{stats_for, ExporterKey, ExporterStats};
use super::writer::WriterMsg;
use crate::config::ExporterConfig;
use crate::decode::{decode_datagram, Decoder, FlowRecord, Limits, Protocol};

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
        match decode_datagram(&mut self.decoder, addr, now_ms, datagram, &mut self.records) {
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
        if let Some(batch) = self.aggregator.flush(due, self.grace_secs) {
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
