//! The collector's own counters: per exporter (address + protocol + source id /
//! observation domain) and for the process as a whole. Rendered as Prometheus text and
//! as the periodic STAT log line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::decode::{PacketSummary, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExporterKey {
    pub address: IpAddr,
    /// `None` for packets whose version is unknown.
    pub protocol: Option<Protocol>,
    /// `None` for datagrams rejected before their source id / domain could be trusted.
    pub source_id: Option<u32>,
}

impl ExporterKey {
    /// Where counters go once a worker tracks [`MAX_EXPORTER_KEYS`] exporters: spoofed
    /// addresses or random source ids cannot grow memory or label sets without bound.
    pub const OVERFLOW: ExporterKey = ExporterKey {
        address: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        protocol: None,
        source_id: None,
    };
}

impl From<crate::decode::ScopeKey> for ExporterKey {
    fn from(scope: crate::decode::ScopeKey) -> Self {
        ExporterKey {
            address: scope.exporter,
            protocol: Some(scope.protocol),
            source_id: Some(scope.source_id),
        }
    }
}

/// Exporter keys one worker keeps counters for.
pub const MAX_EXPORTER_KEYS: usize = 4096;

/// The counters of `key`, or of [`ExporterKey::OVERFLOW`] when the table is full.
pub fn stats_for(
    map: &mut BTreeMap<ExporterKey, ExporterStats>,
    key: ExporterKey,
) -> &mut ExporterStats {
    let key = if map.len() >= MAX_EXPORTER_KEYS && !map.contains_key(&key) {
        ExporterKey::OVERFLOW
    } else {
        key
    };
    map.entry(key).or_default()
}

/// Sequence-number gap tracking in the protocol's unit (v5 flows, v9 packets, IPFIX
/// data records, sFlow datagrams per agent and sub-agent).
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    expected: Option<u32>,
    /// Advance of the last in-order packet, to tell a duplicate from a restart.
    last_advance: u32,
    last_uptime: Option<u32>,
    /// Units counted lost that a late packet may still fill.
    open_gap: u64,
    pub lost_units: u64,
    pub restarts: u64,
}

/// Gaps larger than this are an exporter restart or a reset, not loss.
const MAX_PLAUSIBLE_GAP: u32 = 1 << 24;

impl SequenceTracker {
    pub fn observe(&mut self, sequence: u32, advance: Option<u32>, uptime: Option<u32>) {
        let restarted = match (uptime, self.last_uptime) {
            (Some(now), Some(prev)) => now < prev && prev - now > 10_000,
            _ => false,
        };
        if uptime.is_some() {
            self.last_uptime = uptime;
        }
        let Some(expected) = self.expected.filter(|_| !restarted) else {
            self.restarts += u64::from(restarted);
            return self.resync(sequence, advance);
        };
        let ahead = sequence.wrapping_sub(expected);
        let behind = u64::from(expected.wrapping_sub(sequence));
        let advance_units = u64::from(advance.unwrap_or(0));
        if ahead == 0 {
            self.resync(sequence, advance);
        } else if ahead < MAX_PLAUSIBLE_GAP {
            self.lost_units += u64::from(ahead);
            self.open_gap += u64::from(ahead);
            self.resync(sequence, advance);
        } else if advance_units > 0
            && advance_units <= self.open_gap
            && behind <= self.open_gap + advance_units
        {
            // A late packet fills part of a gap already counted.
            self.lost_units -= advance_units;
            self.open_gap -= advance_units;
        } else if behind <= u64::from(self.last_advance) {
            // A duplicate of the previous packet: nothing lost, nothing to move.
        } else {
            // Backwards beyond any open gap: the exporter restarted its counter (IPFIX
            // has no uptime in its header to tell us so directly).
            self.restarts += 1;
            self.resync(sequence, advance);
        }
    }

    fn resync(&mut self, sequence: u32, advance: Option<u32>) {
        self.expected = advance.map(|a| sequence.wrapping_add(a));
        self.last_advance = advance.unwrap_or(0);
        if self.expected.is_none() {
            self.open_gap = 0;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExporterStats {
    pub packets: u64,
    pub flows: u64,
    /// Sampling-scaled.
    pub bytes: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Data sets waiting for a template now.
    pub held_sets: u64,
    /// Data sets that waited too long (or were evicted) and were dropped.
    pub expired_sets: u64,
    /// Packets refused because the exporter is not on the allow-list.
    pub not_allowed: u64,
    pub sequence: SequenceTracker,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

impl ExporterStats {
    pub fn seen(&mut self, now_ms: i64) {
        if self.first_seen_ms == 0 {
            self.first_seen_ms = now_ms;
        }
        self.last_seen_ms = now_ms;
    }

    /// Lost flows estimated from sequence gaps; v9 and sFlow count datagrams, so they are
    /// scaled by the exporter's average flows (flow samples) per datagram.
    pub fn lost_flows(&self, protocol: Option<Protocol>) -> u64 {
        match protocol {
            Some(Protocol::NetflowV9 | Protocol::Sflow) if self.packets > 0 => {
                self.sequence.lost_units.saturating_mul(self.flows) / self.packets
            }
            _ => self.sequence.lost_units,
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn record_packet(&mut self, s: &PacketSummary) {
        self.sequence
            .observe(s.sequence, s.sequence_advance, s.sys_uptime_ms);
        for e in &s.set_errors {
            *self.errors.entry(e.kind()).or_default() += 1;
        }
    }
}

/// Process-wide counters.
#[derive(Debug, Clone, Default)]
pub struct GlobalStats {
    pub datagrams_received: u64,
    /// Datagrams dropped because a worker queue was full.
    pub queue_drops: u64,
    /// Kernel drops on our sockets (from /proc/net/udp).
    pub socket_drops: u64,
    pub batches_written: u64,
    pub batches_spooled: u64,
    pub batches_replayed: u64,
    pub batches_duplicate: u64,
    /// Batches lost because the spool was full; loud in the log.
    pub batches_dropped: u64,
    pub flows_dropped: u64,
    pub spool_bytes: u64,
    pub database_up: bool,
    pub open_buckets: u64,
    pub clock_skewed_flows: u64,
    pub templates: u64,
}

/// A per-exporter metric: name, type, help, and how to read it.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ExporterStats, Option<Protocol>) -> u64,
);

/// A consistent view for rendering.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub global: GlobalStats,
    pub exporters: BTreeMap<ExporterKey, ExporterStats>,
}

fn label(k: &ExporterKey) -> String {
    if *k == ExporterKey::OVERFLOW {
        return "exporter=\"overflow\",protocol=\"unknown\",source_id=\"unknown\"".to_string();
    }
    format!(
        "exporter=\"{}\",protocol=\"{}\",source_id=\"{}\"",
        k.address,
        k.protocol.map(Protocol::as_str).unwrap_or("unknown"),
        k.source_id
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".to_string())
    )
}

impl Snapshot {
    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let g = &self.global;
        let mut o = String::new();
        let mut gauge = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP flowstage_{name} {help}\n# TYPE flowstage_{name} {kind}\nflowstage_{name} {v}");
        };
        gauge(
            "datagrams_received_total",
            "counter",
            "Datagrams read from the listen sockets.",
            g.datagrams_received,
        );
        gauge(
            "queue_drops_total",
            "counter",
            "Datagrams dropped because a decode queue was full.",
            g.queue_drops,
        );
        gauge(
            "socket_drops_total",
            "counter",
            "Datagrams the kernel dropped on the listen sockets.",
            g.socket_drops,
        );
        gauge(
            "batches_written_total",
            "counter",
            "Bucket batches committed to PostgreSQL.",
            g.batches_written,
        );
        gauge(
            "batches_spooled_total",
            "counter",
            "Bucket batches spooled to disk while the database was away.",
            g.batches_spooled,
        );
        gauge(
            "batches_replayed_total",
            "counter",
            "Spooled batches written after the database came back.",
            g.batches_replayed,
        );
        gauge(
            "batches_duplicate_total",
            "counter",
            "Batches skipped because they were already stored.",
            g.batches_duplicate,
        );
        gauge(
            "batches_dropped_total",
            "counter",
            "Batches lost because the spool was full.",
            g.batches_dropped,
        );
        gauge(
            "flows_dropped_total",
            "counter",
            "Flows in batches lost because the spool was full.",
            g.flows_dropped,
        );
        gauge(
            "spool_bytes",
            "gauge",
            "Bytes waiting in the spool.",
            g.spool_bytes,
        );
        gauge(
            "database_up",
            "gauge",
            "1 while the collector holds a working database connection.",
            u64::from(g.database_up),
        );
        gauge(
            "open_buckets",
            "gauge",
            "Minute buckets not yet finished.",
            g.open_buckets,
        );
        gauge(
            "clock_skewed_flows_total",
            "counter",
            "Flows bucketed by arrival time because their own time was implausible.",
            g.clock_skewed_flows,
        );
        gauge("templates", "gauge", "Templates cached.", g.templates);
        let series: [Series; 9] = [
            (
                "exporter_packets_total",
                "counter",
                "Datagrams per exporter.",
                |s, _| s.packets,
            ),
            (
                "exporter_flows_total",
                "counter",
                "Flow records decoded per exporter.",
                |s, _| s.flows,
            ),
            (
                "exporter_bytes_total",
                "counter",
                "Bytes (sampling-scaled) per exporter.",
                |s, _| s.bytes,
            ),
            (
                "exporter_held_sets",
                "gauge",
                "Data sets waiting for their template.",
                |s, _| s.held_sets,
            ),
            (
                "exporter_expired_sets_total",
                "counter",
                "Data sets dropped after waiting too long for a template.",
                |s, _| s.expired_sets,
            ),
            (
                "exporter_lost_flows_total",
                "counter",
                "Flows lost in transit, estimated from sequence numbers.",
                |s, p| s.lost_flows(p),
            ),
            (
                "exporter_not_allowed_total",
                "counter",
                "Datagrams refused by the allow-list.",
                |s, _| s.not_allowed,
            ),
            (
                "exporter_first_seen_seconds",
                "gauge",
                "Unix time of the first datagram.",
                |s, _| (s.first_seen_ms / 1000) as u64,
            ),
            (
                "exporter_last_seen_seconds",
                "gauge",
                "Unix time of the last datagram.",
                |s, _| (s.last_seen_ms / 1000) as u64,
            ),
        ];
        for (name, kind, help, f) in series {
            let _ = writeln!(
                o,
                "# HELP flowstage_{name} {help}\n# TYPE flowstage_{name} {kind}"
            );
            for (k, s) in &self.exporters {
                let _ = writeln!(o, "flowstage_{name}{{{}}} {}", label(k), f(s, k.protocol));
            }
        }
        let _ = writeln!(o, "# HELP flowstage_exporter_decode_errors_total Decode errors per exporter and kind.\n# TYPE flowstage_exporter_decode_errors_total counter");
        for (k, s) in &self.exporters {
            for (kind, n) in &s.errors {
                let _ = writeln!(
                    o,
                    "flowstage_exporter_decode_errors_total{{{},kind=\"{kind}\"}} {n}",
                    label(k)
                );
            }
        }
        o
    }

    /// One STAT line in the spirit of flow-capture's.
    pub fn stat_line(&self) -> String {
        let g = &self.global;
        let (mut pkts, mut flows, mut bytes, mut errs, mut lost, mut expired) = (0, 0, 0, 0, 0, 0);
        for (k, s) in &self.exporters {
            pkts += s.packets;
            flows += s.flows;
            bytes += s.bytes;
            errs += s.errors_total();
            lost += s.lost_flows(k.protocol);
            expired += s.expired_sets;
        }
        format!(
            "STAT exporters={} packets={pkts} flows={flows} bytes={bytes} decode_errors={errs} lost_flows={lost} expired_sets={expired} queue_drops={} socket_drops={} open_buckets={} batches_written={} spooled={} spool_bytes={} dropped_batches={} db={}",
            self.exporters.len(),
            g.queue_drops,
            g.socket_drops,
            g.open_buckets,
            g.batches_written,
            g.batches_spooled,
            g.spool_bytes,
            g.batches_dropped,
            if g.database_up { "up" } else { "down" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_gap_counts_missing_flows() {
        let mut t = SequenceTracker::default();
        t.observe(0, Some(30), Some(1000));
        t.observe(30, Some(30), Some(2000));
        t.observe(90, Some(30), Some(3000));
        assert_eq!(t.lost_units, 30);
    }

    #[test]
    fn wrap_around_is_not_loss() {
        let mut t = SequenceTracker::default();
        t.observe(u32::MAX - 9, Some(10), None);
        t.observe(0, Some(10), None);
        assert_eq!(t.lost_units, 0);
        t.observe(15, Some(10), None);
        assert_eq!(t.lost_units, 5);
    }

    #[test]
    fn restart_resets_without_loss() {
        let mut t = SequenceTracker::default();
        t.observe(5000, Some(1), Some(9_000_000));
        t.observe(0, Some(1), Some(1_000));
        assert_eq!((t.lost_units, t.restarts), (0, 1));
        t.observe(1, Some(1), Some(2_000));
        assert_eq!(t.lost_units, 0);
    }

    #[test]
    fn ipfix_restart_without_uptime_resets_instead_of_hiding_loss() {
        let mut t = SequenceTracker::default();
        t.observe(0, Some(24), None);
        t.observe(24, Some(24), None);
        t.observe(5000, Some(24), None);
        assert_eq!(t.lost_units, 5000 - 48);
        // The exporter restarts at 0: not loss, and loss after it is seen again.
        t.observe(0, Some(24), None);
        assert_eq!((t.lost_units, t.restarts), (5000 - 48, 1));
        t.observe(48, Some(24), None);
        assert_eq!(t.lost_units, 5000 - 48 + 24);
    }

    #[test]
    fn a_duplicate_is_neither_loss_nor_a_late_fill() {
        let mut t = SequenceTracker::default();
        t.observe(0, Some(30), Some(1));
        t.observe(30, Some(30), Some(2));
        t.observe(30, Some(30), Some(2));
        assert_eq!((t.lost_units, t.restarts), (0, 0));
        t.observe(60, Some(30), Some(3));
        assert_eq!(t.lost_units, 0);
    }

    #[test]
    fn late_packet_fills_the_gap() {
        let mut t = SequenceTracker::default();
        t.observe(0, Some(1), None);
        t.observe(2, Some(1), None);
        assert_eq!(t.lost_units, 1);
        t.observe(1, Some(1), None);
        assert_eq!(t.lost_units, 0);
    }
}
