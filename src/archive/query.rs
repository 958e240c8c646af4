//! Reading the archive back: the flows of a period that match a filter, listed or
//! aggregated by the same keys as `report` (top N + "other"). Only the columns the
//! filter, the key and the sums need are decoded; row groups outside the period are
//! skipped by their statistics; files and row groups are spread over all cores.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use chrono::{DateTime, Utc};
use parquet::data_type::{FixedLenByteArray, FixedLenByteArrayType, Int32Type, Int64Type};
use parquet::file::reader::{FileReader, RowGroupReader};
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::statistics::Statistics;
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::col;
use super::filter::{Cmp, Filter, IfSide, Side};
use crate::collector::batch::Direction;
use crate::report::{Report, ReportBy, ReportRow};
use crate::totals::Totals;

/// Flows may reach the archive this long after they end (active timeouts, exporters'
/// clocks): files whose window starts up to this long after the period are read too.
const LATE_SECS: i64 = 3600;

#[derive(Debug, Clone)]
pub struct QueryOptions {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub filter: Filter,
    /// Aggregate by this key; None lists flows.
    pub by: Option<ReportBy>,
    pub top: usize,
    /// At most this many flows listed.
    pub limit: usize,
    /// Which interface `--by interface` (and `interfaces`) looks at.
    pub direction: Direction,
    pub threads: usize,
    /// Only flows whose (exporter, interface) is one of these: the web's scope and
    /// grants. None: no restriction.
    pub interfaces: Option<std::collections::HashSet<([u8; 16], u32)>>,
}

/// One listed flow.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FlowRow {
    pub start: String,
    pub end: String,
    pub exporter: String,
    pub src_addr: String,
    pub dst_addr: String,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub input_if: u32,
    pub output_if: u32,
    pub src_as: u32,
    pub dst_as: u32,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    #[serde(skip)]
    end_ms: i64,
}

#[derive(Debug, Clone)]
pub enum QueryResult {
    Flows { rows: Vec<FlowRow>, matched: u64 },
    Report(Report),
}

/// What a scan read, for the summary line and the benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanStats {
    pub files: usize,
    pub row_groups: usize,
    pub flows_scanned: u64,
}

/// A network as 16-byte address and prefix length in IPv6 terms.
#[derive(Debug, Clone, Copy)]
struct Net {
    addr: [u8; 16],
    prefix: u8,
}

impl Net {
    fn new(n: &ipnet::IpNet) -> Net {
        let (addr, prefix) = match n {
            ipnet::IpNet::V4(v4) => (
                super::addr_bytes(IpAddr::V4(v4.network())),
                v4.prefix_len() + 96,
            ),
            ipnet::IpNet::V6(v6) => (super::addr_bytes(IpAddr::V6(v6.network())), v6.prefix_len()),
        };
        Net { addr, prefix }
    }

    fn contains(&self, b: &[u8]) -> bool {
        if b.len() != 16 {
            return false;
        }
        let full = usize::from(self.prefix / 8);
        if b[..full] != self.addr[..full] {
            return false;
        }
        let rest = self.prefix % 8;
        rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            (b[full] & mask) == (self.addr[full] & mask)
        }
    }
}

/// The filter with networks prepared for byte comparison.
#[derive(Debug, Clone)]
enum Compiled {
    All,
    Not(Box<Compiled>),
    And(Box<Compiled>, Box<Compiled>),
    Or(Box<Compiled>, Box<Compiled>),
    Net(Side, Net),
    Port(Side, Cmp, u16),
    As(Side, Cmp, u32),
    Proto(u8),
    Interface(IfSide, u32),
    Exporter([u8; 16]),
    Bytes(Cmp, u64),
    Packets(Cmp, u64),
}

fn compile(f: &Filter) -> Compiled {
    match f {
        Filter::All => Compiled::All,
        Filter::Not(a) => Compiled::Not(Box::new(compile(a))),
        Filter::And(a, b) => Compiled::And(Box::new(compile(a)), Box::new(compile(b))),
        Filter::Or(a, b) => Compiled::Or(Box::new(compile(a)), Box::new(compile(b))),
        Filter::Net(s, n) => Compiled::Net(*s, Net::new(n)),
        Filter::Port(s, c, p) => Compiled::Port(*s, *c, *p),
        Filter::As(s, c, a) => Compiled::As(*s, *c, *a),
        Filter::Proto(p) => Compiled::Proto(*p),
        Filter::Interface(s, i) => Compiled::Interface(*s, *i),
        Filter::Exporter(a) => Compiled::Exporter(super::addr_bytes(*a)),
        Filter::Bytes(c, n) => Compiled::Bytes(*c, *n),
        Filter::Packets(c, n) => Compiled::Packets(*c, *n),
    }
}

/// The columns a filter reads.
fn filter_columns(f: &Compiled, out: &mut Vec<usize>) {
    match f {
        Compiled::All => {}
        Compiled::Not(a) => filter_columns(a, out),
        Compiled::And(a, b) | Compiled::Or(a, b) => {
            filter_columns(a, out);
            filter_columns(b, out);
        }
        Compiled::Net(s, _) => out.extend(sided(*s, col::SRC_ADDR, col::DST_ADDR)),
        Compiled::Port(s, _, _) => out.extend(sided(*s, col::SRC_PORT, col::DST_PORT)),
        Compiled::As(s, _, _) => out.extend(sided(*s, col::SRC_AS, col::DST_AS)),
        Compiled::Proto(_) => out.push(col::PROTO),
        Compiled::Interface(s, _) => out.extend(match s {
            IfSide::In => vec![col::INPUT_IF],
            IfSide::Out => vec![col::OUTPUT_IF],
            IfSide::Either => vec![col::INPUT_IF, col::OUTPUT_IF],
        }),
        Compiled::Exporter(_) => out.push(col::EXPORTER),
        Compiled::Bytes(..) => out.push(col::BYTES),
        Compiled::Packets(..) => out.push(col::PACKETS),
    }
}

fn sided(s: Side, src: usize, dst: usize) -> Vec<usize> {
    match s {
        Side::Src => vec![src],
        Side::Dst => vec![dst],
        Side::Either => vec![src, dst],
    }
}

/// The decoded columns of one row group, indexed by schema position (empty where
/// not asked for).
struct Block {
    int64: Vec<Vec<i64>>,
    int32: Vec<Vec<i32>>,
    fixed: Vec<Vec<FixedLenByteArray>>,
}

impl Block {
    fn new() -> Block {
        Block {
            int64: vec![Vec::new(); col::COUNT],
            int32: vec![Vec::new(); col::COUNT],
            fixed: vec![Vec::new(); col::COUNT],
        }
    }
    fn i64(&self, c: usize, i: usize) -> i64 {
        self.int64[c].get(i).copied().unwrap_or(0)
    }
    fn u32(&self, c: usize, i: usize) -> u32 {
        self.int32[c].get(i).map_or(0, |v| *v as u32)
    }
    fn bytes(&self, c: usize, i: usize) -> &[u8] {
        self.fixed[c].get(i).map_or(&[], |v| v.data())
    }
}

fn matches(f: &Compiled, b: &Block, i: usize) -> bool {
    let either = |s: Side, src: usize, dst: usize, test: &dyn Fn(usize) -> bool| match s {
        Side::Src => test(src),
        Side::Dst => test(dst),
        Side::Either => test(src) || test(dst),
    };
    match f {
        Compiled::All => true,
        Compiled::Not(a) => !matches(a, b, i),
        Compiled::And(x, y) => matches(x, b, i) && matches(y, b, i),
        Compiled::Or(x, y) => matches(x, b, i) || matches(y, b, i),
        Compiled::Net(s, n) => either(*s, col::SRC_ADDR, col::DST_ADDR, &|c| {
            n.contains(b.bytes(c, i))
        }),
        Compiled::Port(s, cmp, p) => either(*s, col::SRC_PORT, col::DST_PORT, &|c| {
            cmp.holds(u64::from(b.u32(c, i)), u64::from(*p))
        }),
        Compiled::As(s, cmp, a) => either(*s, col::SRC_AS, col::DST_AS, &|c| {
            cmp.holds(u64::from(b.u32(c, i)), u64::from(*a))
        }),
        Compiled::Proto(p) => b.u32(col::PROTO, i) == u32::from(*p),
        Compiled::Interface(s, n) => match s {
            IfSide::In => b.u32(col::INPUT_IF, i) == *n,
            IfSide::Out => b.u32(col::OUTPUT_IF, i) == *n,
            IfSide::Either => b.u32(col::INPUT_IF, i) == *n || b.u32(col::OUTPUT_IF, i) == *n,
        },
        Compiled::Exporter(a) => b.bytes(col::EXPORTER, i) == a,
        Compiled::Bytes(cmp, n) => cmp.holds(b.i64(col::BYTES, i).max(0) as u64, *n),
        Compiled::Packets(cmp, n) => cmp.holds(b.i64(col::PACKETS, i).max(0) as u64, *n),
    }
}

/// Partitions of the address maps (see [`Sums::addrs`]).
const PARTS: usize = 64;

fn partition(k: u128) -> usize {
    let mixed = ((k >> 64) as u64 ^ k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 58) as usize
}

/// Sums per key, merged across threads.
#[derive(Default)]
struct Sums {
    total: [u64; 3],
    ports: Vec<[u64; 3]>,
    small: FxHashMap<u64, [u64; 3]>,
    /// Address keys, in [`PARTS`] partitions by hash: each row group's rows are first
    /// appended to `pending`, then summed one partition at a time, so the map being
    /// updated is a small one that stays in cache (a million distinct addresses do
    /// not fit).
    addrs: Vec<FxHashMap<u128, [u64; 3]>>,
    pending: Vec<Vec<(u128, [u64; 3])>>,
    pairs: FxHashMap<([u8; 16], u32), [u64; 3]>,
    listed: Vec<FlowRow>,
    matched: u64,
}

fn add(t: &mut [u64; 3], b: u64, p: u64, f: u64) {
    t[0] = t[0].saturating_add(b);
    t[1] = t[1].saturating_add(p);
    t[2] = t[2].saturating_add(f);
}

impl Sums {
    fn merge(&mut self, o: Sums) {
        add(&mut self.total, o.total[0], o.total[1], o.total[2]);
        if self.ports.is_empty() {
            self.ports = o.ports;
        } else {
            for (a, b) in self.ports.iter_mut().zip(o.ports) {
                add(a, b[0], b[1], b[2]);
            }
        }
        for (k, v) in o.small {
            add(self.small.entry(k).or_default(), v[0], v[1], v[2]);
        }
        if self.addrs.is_empty() {
            self.addrs = o.addrs;
        } else {
            for (mine, theirs) in self.addrs.iter_mut().zip(o.addrs) {
                if mine.len() < theirs.len() {
                    let smaller = std::mem::replace(mine, theirs);
                    for (k, v) in smaller {
                        add(mine.entry(k).or_default(), v[0], v[1], v[2]);
                    }
                } else {
                    for (k, v) in theirs {
                        add(mine.entry(k).or_default(), v[0], v[1], v[2]);
                    }
                }
            }
        }
        for (k, v) in o.pairs {
            add(self.pairs.entry(k).or_default(), v[0], v[1], v[2]);
        }
        self.listed.extend(o.listed);
        self.matched += o.matched;
    }
}

/// Every value of one column of a row group.
fn read_column<T: parquet::data_type::DataType>(
    rg: &dyn RowGroupReader,
    c: usize,
    n: usize,
) -> anyhow::Result<Vec<T::T>> {
    let mut r = parquet::column::reader::get_typed_column_reader::<T>(rg.get_column_reader(c)?);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let (records, _, _) = r.read_records(n - v.len(), None, None, &mut v)?;
        if records == 0 {
            break;
        }
    }
    Ok(v)
}

const INT64_COLUMNS: [usize; 5] = [
    col::START_MS,
    col::END_MS,
    col::BYTES,
    col::PACKETS,
    col::FLOWS,
];
const FIXED_COLUMNS: [usize; 4] = [col::EXPORTER, col::SRC_ADDR, col::DST_ADDR, col::NEXT_HOP];

/// The columns a key needs.
fn key_columns(by: Option<ReportBy>, direction: Direction) -> Vec<usize> {
    match by {
        None => vec![
            col::START_MS,
            col::EXPORTER,
            col::SRC_ADDR,
            col::DST_ADDR,
            col::SRC_PORT,
            col::DST_PORT,
            col::PROTO,
            col::INPUT_IF,
            col::OUTPUT_IF,
            col::SRC_AS,
            col::DST_AS,
        ],
        Some(ReportBy::Total) => vec![],
        Some(ReportBy::Exporter) => vec![col::EXPORTER],
        Some(ReportBy::Interface) => vec![
            col::EXPORTER,
            if direction == Direction::In {
                col::INPUT_IF
            } else {
                col::OUTPUT_IF
            },
        ],
        Some(ReportBy::SrcAs) => vec![col::SRC_AS],
        Some(ReportBy::DstAs) => vec![col::DST_AS],
        Some(ReportBy::SrcIp) => vec![col::SRC_ADDR],
        Some(ReportBy::DstIp) => vec![col::DST_ADDR],
        Some(ReportBy::SrcPort) => vec![col::SRC_PORT],
        Some(ReportBy::DstPort) => vec![col::DST_PORT],
        Some(ReportBy::Proto) => vec![col::PROTO],
    }
}

struct Scan<'a> {
    options: &'a QueryOptions,
    filter: Compiled,
    columns: Vec<usize>,
    from_ms: i64,
    to_ms: i64,
}

impl Scan<'_> {
    fn row_group(&self, rg: &dyn RowGroupReader, sums: &mut Sums) -> anyhow::Result<u64> {
        let n = usize::try_from(rg.metadata().num_rows()).unwrap_or(0);
        let mut block = Block::new();
        for &c in &self.columns {
            if INT64_COLUMNS.contains(&c) {
                block.int64[c] = read_column::<Int64Type>(rg, c, n)?;
            } else if FIXED_COLUMNS.contains(&c) {
                block.fixed[c] = read_column::<FixedLenByteArrayType>(rg, c, n)?;
            } else {
                block.int32[c] = read_column::<Int32Type>(rg, c, n)?;
            }
        }
        let ends = std::mem::take(&mut block.int64[col::END_MS]);
        if sums.addrs.is_empty() {
            sums.addrs = vec![FxHashMap::default(); PARTS];
            sums.pending = vec![Vec::new(); PARTS];
        }
        let all = matches!(self.filter, Compiled::All);
        let by = self.options.by;
        let key_if = if self.options.direction == Direction::In {
            col::INPUT_IF
        } else {
            col::OUTPUT_IF
        };
        if by.is_some_and(|b| matches!(b, ReportBy::SrcPort | ReportBy::DstPort | ReportBy::Proto))
            && sums.ports.is_empty()
        {
            sums.ports = vec![[0; 3]; 65_536];
        }
        let bytes = &block.int64[col::BYTES];
        let packets = &block.int64[col::PACKETS];
        let flows = &block.int64[col::FLOWS];
        for (i, end) in ends.iter().enumerate().take(n) {
            if *end < self.from_ms
                || *end >= self.to_ms
                || !(all || matches(&self.filter, &block, i))
            {
                continue;
            }
            if let Some(allowed) = &self.options.interfaces {
                let mut e = [0u8; 16];
                let raw = block.bytes(col::EXPORTER, i);
                if raw.len() == 16 {
                    e.copy_from_slice(raw);
                }
                if !allowed.contains(&(e, block.u32(key_if, i))) {
                    continue;
                }
            }
            let (b, p, f) = (
                bytes.get(i).map_or(0, |v| (*v).max(0) as u64),
                packets.get(i).map_or(0, |v| (*v).max(0) as u64),
                flows.get(i).map_or(0, |v| (*v).max(0) as u64),
            );
            sums.matched += 1;
            add(&mut sums.total, b, p, f);
            match by {
                None => {
                    if sums.listed.len() < self.options.limit {
                        sums.listed.push(flow_row(&block, i, *end));
                    }
                }
                Some(ReportBy::Total) => {}
                Some(ReportBy::SrcPort | ReportBy::DstPort | ReportBy::Proto) => {
                    let c = match by {
                        Some(ReportBy::SrcPort) => col::SRC_PORT,
                        Some(ReportBy::DstPort) => col::DST_PORT,
                        _ => col::PROTO,
                    };
                    let k = (block.u32(c, i) & 0xffff) as usize;
                    add(&mut sums.ports[k], b, p, f);
                }
                Some(ReportBy::SrcAs | ReportBy::DstAs) => {
                    let c = if by == Some(ReportBy::SrcAs) {
                        col::SRC_AS
                    } else {
                        col::DST_AS
                    };
                    add(
                        sums.small.entry(u64::from(block.u32(c, i))).or_default(),
                        b,
                        p,
                        f,
                    );
                }
                Some(ReportBy::SrcIp | ReportBy::DstIp | ReportBy::Exporter) => {
                    let c = match by {
                        Some(ReportBy::SrcIp) => col::SRC_ADDR,
                        Some(ReportBy::DstIp) => col::DST_ADDR,
                        _ => col::EXPORTER,
                    };
                    let mut k = [0u8; 16];
                    let raw = block.bytes(c, i);
                    if raw.len() == 16 {
                        k.copy_from_slice(raw);
                    }
                    let k = u128::from_be_bytes(k);
                    sums.pending[partition(k)].push((k, [b, p, f]));
                }
                Some(ReportBy::Interface) => {
                    let mut k = [0u8; 16];
                    let raw = block.bytes(col::EXPORTER, i);
                    if raw.len() == 16 {
                        k.copy_from_slice(raw);
                    }
                    add(
                        sums.pairs.entry((k, block.u32(key_if, i))).or_default(),
                        b,
                        p,
                        f,
                    );
                }
            }
        }
        for (map, pending) in sums.addrs.iter_mut().zip(sums.pending.iter_mut()) {
            for (k, v) in pending.drain(..) {
                add(map.entry(k).or_default(), v[0], v[1], v[2]);
            }
        }
        Ok(n as u64)
    }
}

fn time_text(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn flow_row(b: &Block, i: usize, end_ms: i64) -> FlowRow {
    FlowRow {
        start: time_text(b.i64(col::START_MS, i)),
        end: time_text(end_ms),
        exporter: super::bytes_addr(b.bytes(col::EXPORTER, i)).to_string(),
        src_addr: super::bytes_addr(b.bytes(col::SRC_ADDR, i)).to_string(),
        dst_addr: super::bytes_addr(b.bytes(col::DST_ADDR, i)).to_string(),
        src_port: b.u32(col::SRC_PORT, i) as u16,
        dst_port: b.u32(col::DST_PORT, i) as u16,
        proto: b.u32(col::PROTO, i) as u8,
        input_if: b.u32(col::INPUT_IF, i),
        output_if: b.u32(col::OUTPUT_IF, i),
        src_as: b.u32(col::SRC_AS, i),
        dst_as: b.u32(col::DST_AS, i),
        bytes: b.i64(col::BYTES, i).max(0) as u64,
        packets: b.i64(col::PACKETS, i).max(0) as u64,
        flows: b.i64(col::FLOWS, i).max(0) as u64,
        end_ms,
    }
}

/// Whether a row group's end times can overlap [from, to).
fn overlaps(rg: &parquet::file::metadata::RowGroupMetaData, from_ms: i64, to_ms: i64) -> bool {
    match rg.column(col::END_MS).statistics() {
        Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(min), Some(max)) => *max >= from_ms && *min < to_ms,
            _ => true,
        },
        _ => true,
    }
}

/// The files that may hold flows ending in [from, to).
pub fn files_for(
    root: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    window_secs: i64,
) -> anyhow::Result<Vec<PathBuf>> {
    Ok(super::list(root)?
        .into_iter()
        .filter(|f| {
            f.window + chrono::Duration::seconds(window_secs.max(60)) > from
                && f.window < to + chrono::Duration::seconds(LATE_SECS)
        })
        .map(|f| f.path)
        .collect())
}

/// Run a query over the given files. `names` maps exporter addresses to names for
/// the exporter and interface keys.
pub fn run(
    files: &[PathBuf],
    options: &QueryOptions,
    names: &HashMap<IpAddr, String>,
) -> anyhow::Result<(QueryResult, ScanStats)> {
    let filter = compile(&options.filter);
    let mut columns = vec![col::END_MS, col::BYTES, col::PACKETS, col::FLOWS];
    filter_columns(&filter, &mut columns);
    columns.extend(key_columns(options.by, options.direction));
    if options.interfaces.is_some() {
        columns.push(col::EXPORTER);
        columns.push(if options.direction == Direction::In {
            col::INPUT_IF
        } else {
            col::OUTPUT_IF
        });
    }
    columns.sort_unstable();
    columns.dedup();
    let scan = Scan {
        options,
        filter,
        columns,
        from_ms: options.from.timestamp_millis(),
        to_ms: options.to.timestamp_millis(),
    };
    // Work items: every row group of every file that overlaps the period.
    let readers: Vec<(PathBuf, SerializedFileReader<std::fs::File>)> = files
        .iter()
        .map(|p| {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let r =
                SerializedFileReader::new(f).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.clone(), r))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut work = Vec::new();
    for (fi, (_, r)) in readers.iter().enumerate() {
        for (gi, rg) in r.metadata().row_groups().iter().enumerate() {
            if overlaps(rg, scan.from_ms, scan.to_ms) {
                work.push((fi, gi));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let merged = Mutex::new(Sums::default());
    let scanned = std::sync::atomic::AtomicU64::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let threads = options.threads.clamp(1, 64).min(work.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut sums = Sums::default();
                // Each thread reads through its own file handles: handles cloned from
                // one share a file offset.
                let mut own: HashMap<usize, SerializedFileReader<std::fs::File>> = HashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(fi, gi)) = work.get(i) else { break };
                    let path = &readers[fi].0;
                    let reader = match own.entry(fi) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            let opened = std::fs::File::open(path)
                                .map_err(anyhow::Error::from)
                                .and_then(|f| {
                                    SerializedFileReader::new(f).map_err(anyhow::Error::from)
                                });
                            match opened {
                                Ok(r) => v.insert(r),
                                Err(e) => {
                                    if let Ok(mut f) = failure.lock() {
                                        f.get_or_insert(
                                            e.context(format!("reading {}", path.display())),
                                        );
                                    }
                                    break;
                                }
                            }
                        }
                    };
                    let result = reader
                        .get_row_group(gi)
                        .map_err(anyhow::Error::from)
                        .and_then(|rg| scan.row_group(rg.as_ref(), &mut sums))
                        .with_context(|| format!("reading {} row group {gi}", path.display()));
                    match result {
                        Ok(n) => {
                            scanned.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
                if let Ok(mut m) = merged.lock() {
                    m.merge(sums);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let sums = merged.into_inner().unwrap_or_default();
    let stats = ScanStats {
        files: files.len(),
        row_groups: work.len(),
        flows_scanned: scanned.into_inner(),
    };
    let total = Totals {
        bytes: sums.total[0],
        packets: sums.total[1],
        flows: sums.total[2],
    };
    let Some(by) = options.by else {
        let mut rows = sums.listed;
        rows.sort_by_key(|r| r.end_ms);
        rows.truncate(options.limit);
        return Ok((
            QueryResult::Flows {
                rows,
                matched: sums.matched,
            },
            stats,
        ));
    };
    let name_of = |b: &[u8; 16]| {
        let a = super::bytes_addr(b);
        names.get(&a).cloned().unwrap_or_else(|| a.to_string())
    };
    let mut keyed: Vec<(String, [u64; 3])> = match by {
        ReportBy::Total => vec![("total".to_string(), sums.total)],
        ReportBy::SrcPort | ReportBy::DstPort | ReportBy::Proto => sums
            .ports
            .iter()
            .enumerate()
            .filter(|(_, t)| t[2] > 0 || t[0] > 0)
            .map(|(k, t)| (k.to_string(), *t))
            .collect(),
        ReportBy::SrcAs | ReportBy::DstAs => sums
            .small
            .iter()
            .map(|(k, t)| (k.to_string(), *t))
            .collect(),
        ReportBy::SrcIp | ReportBy::DstIp => {
            // A million addresses are not all turned into text: the top N (with any
            // ties at the cut) are chosen on the numbers first.
            let mut all: Vec<(u128, [u64; 3])> =
                sums.addrs.iter().flatten().map(|(k, t)| (*k, *t)).collect();
            let mut rest = [0u64; 3];
            if all.len() > options.top {
                all.select_nth_unstable_by(options.top - 1, |a, b| b.1[0].cmp(&a.1[0]));
                let cut = all[options.top - 1].1[0];
                let (head, tail) = all.split_at(options.top);
                let mut kept = head.to_vec();
                for (k, t) in tail {
                    if t[0] == cut {
                        kept.push((*k, *t));
                    } else {
                        add(&mut rest, t[0], t[1], t[2]);
                    }
                }
                all = kept;
            }
            let mut keyed: Vec<(String, [u64; 3])> = all
                .iter()
                .map(|(k, t)| (super::bytes_addr(&k.to_be_bytes()).to_string(), *t))
                .collect();
            if rest != [0; 3] {
                // Summed below into "other" with the rows past the top N.
                keyed.push((String::new(), rest));
            }
            keyed
        }
        ReportBy::Exporter => sums
            .addrs
            .iter()
            .flatten()
            .map(|(k, t)| (name_of(&k.to_be_bytes()), *t))
            .collect(),
        ReportBy::Interface => sums
            .pairs
            .iter()
            .map(|((e, i), t)| (format!("{}:{i}", name_of(e)), *t))
            .collect(),
    };
    // The pre-summed rest of a long address list (empty key) sorts last.
    keyed.sort_by(|a, b| {
        a.0.is_empty()
            .cmp(&b.0.is_empty())
            .then(b.1[0].cmp(&a.1[0]))
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut rows = Vec::new();
    let mut other = [0u64; 3];
    for (i, (key, t)) in keyed.into_iter().enumerate() {
        if i < options.top && !key.is_empty() {
            rows.push(ReportRow {
                key,
                bytes: t[0],
                packets: t[1],
                flows: t[2],
            });
        } else {
            add(&mut other, t[0], t[1], t[2]);
        }
    }
    if other != [0; 3] {
        rows.push(ReportRow {
            key: "other".into(),
            bytes: other[0],
            packets: other[1],
            flows: other[2],
        });
    }
    Ok((
        QueryResult::Report(Report {
            from: options.from.to_rfc3339(),
            to: options.to.to_rfc3339(),
            by,
            rows,
            total,
            sources: vec![format!("archive {} files", stats.files)],
        }),
        stats,
    ))
}

/// Listed flows as text, CSV or JSON.
pub fn render_flows(
    rows: &[FlowRow],
    matched: u64,
    format: crate::report::ReportFormat,
) -> anyhow::Result<String> {
    use crate::report::ReportFormat;
    Ok(match format {
        ReportFormat::Json => {
            serde_json::to_string_pretty(&serde_json::json!({ "matched": matched, "flows": rows }))?
                + "\n"
        }
        ReportFormat::Csv => {
            let mut o = String::from(
                "start,end,exporter,src_addr,dst_addr,src_port,dst_port,proto,input_if,output_if,src_as,dst_as,bytes,packets,flows\n",
            );
            for r in rows {
                let _ = writeln!(
                    o,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    r.start,
                    r.end,
                    r.exporter,
                    r.src_addr,
                    r.dst_addr,
                    r.src_port,
                    r.dst_port,
                    r.proto,
                    r.input_if,
                    r.output_if,
                    r.src_as,
                    r.dst_as,
                    r.bytes,
                    r.packets,
                    r.flows
                );
            }
            o
        }
        ReportFormat::Text => {
            let mut o = format!(
                "{:<24} {:>5} {:>39}   {:>39} {:>6} {:>6} {:>12} {:>9} {:>5}\n",
                "end", "proto", "source", "destination", "in", "out", "bytes", "packets", "flows"
            );
            for r in rows {
                let _ = writeln!(
                    o,
                    "{:<24} {:>5} {:>39} > {:<39} {:>6} {:>6} {:>12} {:>9} {:>5}",
                    r.end,
                    r.proto,
                    format!("{}:{}", r.src_addr, r.src_port),
                    format!("{}:{}", r.dst_addr, r.dst_port),
                    r.input_if,
                    r.output_if,
                    r.bytes,
                    r.packets,
                    r.flows
                );
            }
            let _ = writeln!(o, "{matched} flows matched, {} shown", rows.len());
            o
        }
    })
}
