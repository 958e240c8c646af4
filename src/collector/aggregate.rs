//! Per-minute aggregation following Stager's report set. Each flow is counted once on
//! its input interface (direction in) and once on its output interface (direction out);
//! within a bucket every dimension keeps all keys until the bucket is finished, then
//! the top N by bytes plus one "other" row, so totals stay exact.

use std::hash::{Hash, Hasher};
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

/// Slots probed for a key before the smallest of them is evicted.
const WINDOW: usize = 8;

/// A bounded heavy-hitter table: open addressing with a short probe window, growing
/// from a few slots up to `max_slots`. When a new key finds its window full, the entry
/// with the fewest bytes in that window (by order of magnitude) moves to `evicted`
/// ("other") and the new key takes its slot. Totals therefore stay exact; only which
/// keys make the top N can differ from an unbounded count, and only for buckets with
/// more distinct keys than the table holds. Slots never become empty again, so an
/// empty slot ends a lookup.
///
/// A one-byte fingerprint and a one-byte magnitude per slot sit in their own array, so
/// a probe reads one cache line of metadata and touches a key only on a likely match.
/// Written here rather than taken from a crate because the eviction rule is the point.
#[derive(Debug)]
struct TopTable<K> {
    /// (fingerprint, magnitude of bytes); fingerprint 0 marks an empty slot.
    meta: Vec<[u8; 2]>,
    keys: Vec<K>,
    totals: Vec<Totals>,
    used: usize,
    evicted: Totals,
}

/// The slot to give up when a probe window is full, and the new key's fingerprint.
#[derive(Debug, Clone, Copy)]
struct Victim {
    slot: usize,
    fingerprint: u8,
}

#[inline]
fn magnitude(bytes: u64) -> u8 {
    (64 - bytes.leading_zeros()) as u8
}

impl<K: Hash + Eq + Copy> TopTable<K> {
    fn new() -> Self {
        TopTable {
            meta: Vec::new(),
            keys: Vec::new(),
            totals: Vec::new(),
            used: 0,
            evicted: Totals::default(),
        }
    }

    #[inline]
    fn add(&mut self, key: K, add: Totals, max_slots: usize) {
        if self.used * 2 >= self.meta.len() && self.meta.len() < max_slots {
            self.grow(max_slots, key);
        }
        loop {
            match self.try_insert(key, add) {
                Ok(()) => return,
                // Only a table at its size limit evicts; a smaller one grows instead.
                Err(_) if self.meta.len() < max_slots => self.grow(max_slots, key),
                Err(victim) => return self.replace(victim, key, add),
            }
        }
    }

    /// Add to `key`'s slot or take an empty one; `Err(victim)` when the probe window is
    /// full, naming the slot with the fewest bytes.
    #[inline]
    fn try_insert(&mut self, key: K, add: Totals) -> Result<(), Victim> {
        let (fingerprint, home) = Self::hash(&key);
        let mask = self.meta.len() - 1;
        let mut victim = home & mask;
        let mut victim_magnitude = u8::MAX;
        for i in 0..WINDOW.min(self.meta.len()) {
            let idx = (home + i) & mask;
            let [fp, mag] = self.meta[idx];
            if fp == 0 {
                self.meta[idx] = [fingerprint, magnitude(add.bytes)];
                self.keys[idx] = key;
                self.totals[idx] = add;
                self.used += 1;
                return Ok(());
            }
            if fp == fingerprint && self.keys[idx] == key {
                let t = &mut self.totals[idx];
                t.add(add.bytes, add.packets, add.flows);
                self.meta[idx][1] = magnitude(t.bytes);
                return Ok(());
            }
            if mag < victim_magnitude {
                victim_magnitude = mag;
                victim = idx;
            }
        }
        Err(Victim {
            slot: victim,
            fingerprint,
        })
    }

    #[inline]
    fn hash(key: &K) -> (u8, usize) {
        let mut h = rustc_hash::FxHasher::default();
        key.hash(&mut h);
        let hash = h.finish();
        (((hash >> 56) as u8).max(1), (hash ^ (hash >> 29)) as usize)
    }

    /// Move the victim's counts to "other" and give its slot to `key`.
    fn replace(&mut self, victim: Victim, key: K, add: Totals) {
        let Victim {
            slot: victim,
            fingerprint,
        } = victim;
        let old = self.totals[victim];
        self.evicted.add(old.bytes, old.packets, old.flows);
        self.meta[victim] = [fingerprint, magnitude(add.bytes)];
        self.keys[victim] = key;
        self.totals[victim] = add;
    }

    /// Double the table (more while entries do not fit their windows, up to the limit);
    /// `filler` only initialises unused key slots.
    fn grow(&mut self, max_slots: usize, filler: K) {
        let limit = max_slots.next_power_of_two().max(16);
        let meta = std::mem::take(&mut self.meta);
        let keys = std::mem::take(&mut self.keys);
        let totals = std::mem::take(&mut self.totals);
        let mut size = (meta.len() * 2).clamp(16, limit);
        'retry: loop {
            self.meta = vec![[0, 0]; size];
            self.keys = vec![filler; size];
            self.totals = vec![Totals::default(); size];
            self.used = 0;
            for ((m, k), t) in meta.iter().zip(&keys).zip(&totals) {
                if m[0] == 0 {
                    continue;
                }
                if let Err(victim) = self.try_insert(*k, *t) {
                    if size < limit {
                        size *= 2;
                        continue 'retry;
                    }
                    self.replace(victim, *k, *t);
                }
            }
            return;
        }
    }

    fn top(self, n: usize, to_key: impl Fn(K) -> Key) -> Vec<(Key, Totals)> {
        let mut rows: Vec<(K, Totals)> = self
            .meta
            .iter()
            .zip(self.keys)
            .zip(self.totals)
            .filter(|((m, _), _)| m[0] != 0)
            .map(|((_, k), t)| (k, t))
            .collect();
        let mut other = self.evicted;
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
    src_as: TopTable<u32>,
    dst_as: TopTable<u32>,
    src_ip: TopTable<IpAddr>,
    dst_ip: TopTable<IpAddr>,
    src_port: TopTable<u16>,
    dst_port: TopTable<u16>,
    proto: Box<[Totals; 256]>,
}

impl Accumulator {
    fn new() -> Self {
        Accumulator {
            totals: Vec::new(),
            src_as: TopTable::new(),
            dst_as: TopTable::new(),
            src_ip: TopTable::new(),
            dst_ip: TopTable::new(),
            src_port: TopTable::new(),
            dst_port: TopTable::new(),
            proto: Box::new([Totals::default(); 256]),
        }
    }

    /// Totals and protocol, the cheap part of counting a flow.
    #[inline]
    fn count_total(&mut self, rate: u32, proto: u8, t: Totals) {
        match self.totals.iter_mut().find(|(r, _)| *r == rate) {
            Some((_, total)) => total.add(t.bytes, t.packets, t.flows),
            None => self.totals.push((rate, t)),
        }
        self.proto[usize::from(proto)].add(t.bytes, t.packets, t.flows);
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

/// Open minute buckets of one worker, kept in a slab so that a datagram's flows can be
/// counted one report kind at a time (see [`Aggregator::add_batch`]).
#[derive(Debug)]
pub struct Aggregator {
    index: FxHashMap<BucketKey, usize>,
    keys: Vec<BucketKey>,
    slab: Vec<Accumulator>,
    /// Per flow of the current batch: (input bucket, output bucket, scaled totals).
    scratch: Vec<(usize, usize, Totals)>,
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

/// One pass of a batch over one report kind, both directions.
#[inline]
fn pass<K: Hash + Eq + Copy>(
    slab: &mut [Accumulator],
    records: &[FlowRecord],
    slots: &[(usize, usize, Totals)],
    cap: usize,
    table: impl Fn(&mut Accumulator) -> &mut TopTable<K>,
    key: impl Fn(&FlowRecord) -> K,
) {
    for (r, &(i, o, t)) in records.iter().zip(slots) {
        let k = key(r);
        table(&mut slab[i]).add(k, t, cap);
        table(&mut slab[o]).add(k, t, cap);
    }
}

impl Aggregator {
    pub fn new(top_n: usize, max_keys: usize, batch_prefix: String) -> Self {
        Aggregator {
            index: FxHashMap::default(),
            keys: Vec::new(),
            slab: Vec::new(),
            scratch: Vec::new(),
            top_n,
            max_keys,
            batch_prefix,
            batch_seq: 0,
            clock_skewed_flows: 0,
        }
    }

    #[inline]
    fn slot_for(&mut self, key: BucketKey) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.keys.push(key);
        self.slab.push(Accumulator::new());
        self.index.insert(key, self.slab.len() - 1);
        self.slab.len() - 1
    }

    /// Count the flows of one datagram (already carrying their effective sampling
    /// rate). Each flow counts on its input interface (in) and output interface (out).
    /// The high-cardinality tables are updated one report kind at a time, so the
    /// lookups of different flows are independent and their cache misses overlap.
    pub fn add_batch(&mut self, exporter: IpAddr, records: &[FlowRecord], now_ms: i64) {
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        // A datagram's flows share the exporter and mostly the minute: a few recent
        // buckets answer most lookups without hashing.
        let mut recent: Vec<(BucketKey, usize)> = Vec::with_capacity(16);
        let mut slot = |agg: &mut Self, key: BucketKey| {
            if let Some(&(_, i)) = recent.iter().find(|(k, _)| *k == key) {
                return i;
            }
            let i = agg.slot_for(key);
            if recent.len() < 16 {
                recent.push((key, i));
            }
            i
        };
        for r in records {
            let t =
                if r.end_ms > now_ms + MAX_SKEW_FUTURE_MS || r.end_ms < now_ms - MAX_SKEW_PAST_MS {
                    self.clock_skewed_flows += 1;
                    now_ms
                } else {
                    r.end_ms
                };
            let minute = t.div_euclid(60_000) * 60;
            let totals = Totals {
                bytes: r.scaled_bytes(),
                packets: r.scaled_packets(),
                flows: r.flows,
            };
            let i = slot(
                self,
                BucketKey {
                    minute,
                    exporter,
                    ifindex: r.input_if,
                    direction: Direction::In,
                },
            );
            let o = slot(
                self,
                BucketKey {
                    minute,
                    exporter,
                    ifindex: r.output_if,
                    direction: Direction::Out,
                },
            );
            self.slab[i].count_total(r.sampling_rate, r.proto, totals);
            self.slab[o].count_total(r.sampling_rate, r.proto, totals);
            slots.push((i, o, totals));
        }
        let (slab, cap) = (&mut self.slab[..], self.max_keys);
        pass(
            slab,
            records,
            &slots,
            cap,
            |a| &mut a.src_ip,
            |r| r.src_addr,
        );
        pass(
            slab,
            records,
            &slots,
            cap,
            |a| &mut a.dst_ip,
            |r| r.dst_addr,
        );
        pass(slab, records, &slots, cap, |a| &mut a.src_as, |r| r.src_as);
        pass(slab, records, &slots, cap, |a| &mut a.dst_as, |r| r.dst_as);
        pass(
            slab,
            records,
            &slots,
            cap,
            |a| &mut a.src_port,
            |r| r.src_port,
        );
        pass(
            slab,
            records,
            &slots,
            cap,
            |a| &mut a.dst_port,
            |r| r.dst_port,
        );
        self.scratch = slots;
    }

    pub fn open_buckets(&self) -> usize {
        self.slab.len()
    }

    /// Finish every bucket whose minute ended at least `grace_secs` before `now_ms`
    /// (all of them when `now_ms` is `None`), as one batch.
    pub fn flush(&mut self, now_ms: Option<i64>, grace_secs: u64) -> Option<Batch> {
        let due = |k: &BucketKey| match now_ms {
            Some(now) => (k.minute + 60 + grace_secs as i64) * 1000 <= now,
            None => true,
        };
        if !self.keys.iter().any(due) {
            return None;
        }
        let mut buckets = Vec::new();
        let (mut keys, mut slab) = (Vec::new(), Vec::new());
        for (key, acc) in std::mem::take(&mut self.keys)
            .into_iter()
            .zip(std::mem::take(&mut self.slab))
        {
            if due(&key) {
                buckets.push(acc.finish(key, self.top_n));
            } else {
                keys.push(key);
                slab.push(acc);
            }
        }
        self.index = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        self.keys = keys;
        self.slab = slab;
        buckets.sort_by_key(|b| (b.minute, b.exporter, b.ifindex, b.direction));
        let mut batch = self.empty_batch();
        batch.buckets = buckets;
        Some(batch)
    }

    /// A batch with a new id and nothing in it yet (for rows that wait for no minute to
    /// end, such as sFlow counters).
    pub fn empty_batch(&mut self) -> Batch {
        self.batch_seq += 1;
        Batch {
            id: format!("{}-{}", self.batch_prefix, self.batch_seq),
            buckets: Vec::new(),
            counters: Vec::new(),
        }
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
            agg.add_batch(exporter, &[flow(port, 100 + u64::from(port), 1)], 130_000);
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
        agg.add_batch(exporter, &[flow(1, 1, 1)], 130_000);
        assert!(agg.flush(Some(130_000), 10).is_none());
        assert!(agg.flush(Some(190_000), 10).is_some());
        assert_eq!(agg.open_buckets(), 0);
    }

    #[test]
    fn table_keeps_every_key_below_its_limit() {
        let mut t = TopTable::new();
        for k in 0..1000u32 {
            t.add(
                k,
                Totals {
                    bytes: 1,
                    packets: 1,
                    flows: 1,
                },
                2048,
            );
        }
        let rows = t.top(2000, Key::As);
        assert_eq!(rows.len(), 1000, "no key folded into other");
        assert!(!rows.iter().any(|(k, _)| *k == Key::Other));
    }

    #[test]
    fn full_table_evicts_small_keys_and_keeps_totals_exact() {
        let mut t = TopTable::new();
        let mut total = Totals::default();
        for k in 0..50_000u32 {
            // Key 7 is a heavy hitter that recurs; the rest are one-off small flows.
            let (key, bytes) = if k % 10 == 0 {
                (7, 10_000)
            } else {
                (k + 100, 1 + u64::from(k % 5))
            };
            t.add(
                key,
                Totals {
                    bytes,
                    packets: 1,
                    flows: 1,
                },
                64,
            );
            total.add(bytes, 1, 1);
        }
        let rows = t.top(10, Key::As);
        assert_eq!(rows.len(), 11);
        let sum = rows.iter().fold(Totals::default(), |mut a, (_, r)| {
            a.add(r.bytes, r.packets, r.flows);
            a
        });
        assert_eq!(sum, total);
        let heavy = rows
            .iter()
            .find(|(k, _)| *k == Key::As(7))
            .map(|(_, t)| t.bytes);
        assert_eq!(
            heavy,
            Some(5_000 * 10_000),
            "the heavy hitter is never evicted"
        );
    }
}
