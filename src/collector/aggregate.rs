//! Per-minute aggregation following Stager's report set. Each flow is counted once on
//! its input interface (direction in) and once on its output interface (direction out);
//! within a bucket every dimension keeps all keys until the bucket is finished, then
//! the top N by bytes plus one "other" row, so totals stay exact.

use std::hash::Hash;
use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::batch::{Batch, Bucket, Dimension, DimensionRows, Direction, Key};
use crate::decode::FlowRecord;
use crate::totals::Totals;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BucketKey {
    minute: i64,
    exporter: IpAddr,
    ifindex: u32,
    direction: Direction,
}

/// A map that stops growing at `cap` keys; later keys are counted in `overflow`.
#[derive(Debug)]
struct CappedMap<K> {
    map: FxHashMap<K, Totals>,
    overflow: Totals,
}

impl<K: Hash + Eq + Copy> CappedMap<K> {
    fn new() -> Self {
        CappedMap {
            map: FxHashMap::default(),
            overflow: Totals::default(),
        }
    }

    #[inline]
    fn add(&mut self, key: K, bytes: u64, packets: u64, flows: u64, cap: usize) {
        if let Some(t) = self.map.get_mut(&key) {
            t.add(bytes, packets, flows);
        } else if self.map.len() < cap {
            self.map.insert(
                key,
                Totals {
                    bytes,
                    packets,
                    flows,
                },
            );
        } else {
            self.overflow.add(bytes, packets, flows);
        }
    }

    fn top(self, n: usize, to_key: impl Fn(K) -> Key) -> Vec<(Key, Totals)> {
        let mut rows: Vec<(K, Totals)> = self.map.into_iter().collect();
        let mut other = self.overflow;
        if rows.len() > n {
            rows.select_nth_unstable_by(n, |a, b| b.1.bytes.cmp(&a.1.bytes));
            for (_, t) in rows.drain(n..) {
                other.add(t.bytes, t.packets, t.flows);
            }
        }
        let mut out: Vec<(Key, Totals)> = rows.into_iter().map(|(k, t)| (to_key(k), t)).collect();
        if other != Totals::default() {
            out.push((Key::Other, other));
        }
        out
    }
}

#[derive(Debug)]
struct Accumulator {
    totals: Vec<(u32, Totals)>,
    src_as: CappedMap<u32>,
    dst_as: CappedMap<u32>,
    src_ip: CappedMap<IpAddr>,
    dst_ip: CappedMap<IpAddr>,
    src_port: CappedMap<u16>,
    dst_port: CappedMap<u16>,
    proto: Box<[Totals; 256]>,
}

impl Accumulator {
    fn new() -> Self {
        Accumulator {
            totals: Vec::new(),
            src_as: CappedMap::new(),
            dst_as: CappedMap::new(),
            src_ip: CappedMap::new(),
            dst_ip: CappedMap::new(),
            src_port: CappedMap::new(),
            dst_port: CappedMap::new(),
            proto: Box::new([Totals::default(); 256]),
        }
    }

    #[inline]
    fn add(&mut self, r: &FlowRecord, bytes: u64, packets: u64, cap: usize) {
        let flows = r.flows;
        match self
            .totals
            .iter_mut()
            .find(|(rate, _)| *rate == r.sampling_rate)
        {
            Some((_, t)) => t.add(bytes, packets, flows),
            None => self.totals.push((
                r.sampling_rate,
                Totals {
                    bytes,
                    packets,
                    flows,
                },
            )),
        }
        self.src_as.add(r.src_as, bytes, packets, flows, cap);
        self.dst_as.add(r.dst_as, bytes, packets, flows, cap);
        self.src_ip.add(r.src_addr, bytes, packets, flows, cap);
        self.dst_ip.add(r.dst_addr, bytes, packets, flows, cap);
        self.src_port.add(r.src_port, bytes, packets, flows, cap);
        self.dst_port.add(r.dst_port, bytes, packets, flows, cap);
        self.proto[usize::from(r.proto)].add(bytes, packets, flows);
    }

    fn finish(self, key: BucketKey, top_n: usize) -> Bucket {
        let proto_rows: Vec<(Key, Totals)> = self
            .proto
            .iter()
            .enumerate()
            .filter(|(_, t)| **t != Totals::default())
            .map(|(p, t)| (Key::Proto(p as u8), *t))
            .collect();
        let dims = [
            (Dimension::SrcAs, self.src_as.top(top_n, Key::As)),
            (Dimension::DstAs, self.dst_as.top(top_n, Key::As)),
            (Dimension::SrcIp, self.src_ip.top(top_n, Key::Ip)),
            (Dimension::DstIp, self.dst_ip.top(top_n, Key::Ip)),
            (Dimension::SrcPort, self.src_port.top(top_n, Key::Port)),
            (Dimension::DstPort, self.dst_port.top(top_n, Key::Port)),
            (Dimension::Proto, proto_rows),
        ];
        Bucket {
            minute: key.minute,
            exporter: key.exporter,
            ifindex: key.ifindex,
            direction: key.direction,
            totals: self.totals,
            dimensions: dims
                .into_iter()
                .map(|(dimension, rows)| DimensionRows { dimension, rows })
                .collect(),
        }
    }
}

/// Open minute buckets of one worker.
#[derive(Debug)]
pub struct Aggregator {
    buckets: FxHashMap<BucketKey, Accumulator>,
    top_n: usize,
    max_keys: usize,
    batch_prefix: String,
    batch_seq: u64,
    /// Flows whose own timestamp was implausible and were bucketed by arrival time.
    pub clock_skewed_flows: u64,
}

/// Flows stamped further than this from the receive time are bucketed by receive time.
const MAX_SKEW_FUTURE_MS: i64 = 10 * 60 * 1000;
const MAX_SKEW_PAST_MS: i64 = 24 * 3600 * 1000;

impl Aggregator {
    pub fn new(top_n: usize, max_keys: usize, batch_prefix: String) -> Self {
        Aggregator {
            buckets: FxHashMap::default(),
            top_n,
            max_keys,
            batch_prefix,
            batch_seq: 0,
            clock_skewed_flows: 0,
        }
    }

    /// Count one flow (already carrying its effective sampling rate).
    #[inline]
    pub fn add(&mut self, exporter: IpAddr, r: &FlowRecord, now_ms: i64) {
        let t = if r.end_ms > now_ms + MAX_SKEW_FUTURE_MS || r.end_ms < now_ms - MAX_SKEW_PAST_MS {
            self.clock_skewed_flows += 1;
            now_ms
        } else {
            r.end_ms
        };
        let minute = t.div_euclid(60_000) * 60;
        let (bytes, packets) = (r.scaled_bytes(), r.scaled_packets());
        let cap = self.max_keys;
        for (ifindex, direction) in [(r.input_if, Direction::In), (r.output_if, Direction::Out)] {
            let key = BucketKey {
                minute,
                exporter,
                ifindex,
                direction,
            };
            self.buckets
                .entry(key)
                .or_insert_with(Accumulator::new)
                .add(r, bytes, packets, cap);
        }
    }

    pub fn open_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Finish every bucket whose minute ended at least `grace_secs` before `now_ms`
    /// (all of them when `now_ms` is `None`), as one batch.
    pub fn flush(&mut self, now_ms: Option<i64>, grace_secs: u64) -> Option<Batch> {
        let due: Vec<BucketKey> = self
            .buckets
            .keys()
            .filter(|k| match now_ms {
                Some(now) => (k.minute + 60 + grace_secs as i64) * 1000 <= now,
                None => true,
            })
            .copied()
            .collect();
        if due.is_empty() {
            return None;
        }
        let mut buckets = Vec::with_capacity(due.len());
        for key in due {
            if let Some(acc) = self.buckets.remove(&key) {
                buckets.push(acc.finish(key, self.top_n));
            }
        }
        buckets.sort_by_key(|b| (b.minute, b.exporter, b.ifindex, b.direction));
        self.batch_seq += 1;
        Some(Batch {
            id: format!("{}-{}", self.batch_prefix, self.batch_seq),
            buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn flow(port: u16, bytes: u64, input_if: u32) -> FlowRecord {
        FlowRecord {
            dst_port: port,
            bytes,
            packets: 1,
            input_if,
            output_if: 9,
            end_ms: 120_000,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn top_n_keeps_totals_exact() {
        let exporter = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut agg = Aggregator::new(3, 1000, "t".into());
        for port in 0..10u16 {
            agg.add(exporter, &flow(port, 100 + u64::from(port), 1), 130_000);
        }
        let batch = agg.flush(None, 0).expect("a batch");
        assert_eq!(batch.flows(), 10);
        let input = batch
            .buckets
            .iter()
            .find(|b| b.direction == Direction::In)
            .expect("in");
        let ports = input
            .dimensions
            .iter()
            .find(|d| d.dimension == Dimension::DstPort)
            .expect("ports");
        assert_eq!(ports.rows.len(), 4, "top 3 + other");
        let sum: u64 = ports.rows.iter().map(|(_, t)| t.bytes).sum();
        assert_eq!(sum, (0..10).map(|p| 100 + p).sum::<u64>());
        let kept: Vec<Key> = ports.rows.iter().map(|(k, _)| *k).collect();
        for p in [7u16, 8, 9] {
            assert!(kept.contains(&Key::Port(p)), "{kept:?}");
        }
        assert!(kept.contains(&Key::Other));
    }

    #[test]
    fn flush_waits_for_grace() {
        let exporter = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut agg = Aggregator::new(3, 1000, "t".into());
        agg.add(exporter, &flow(1, 1, 1), 130_000);
        assert!(agg.flush(Some(130_000), 10).is_none());
        assert!(agg.flush(Some(190_000), 10).is_some());
        assert_eq!(agg.open_buckets(), 0);
    }
}
