//! The archive's writer thread: workers hand it decoded flows in batches; it buffers
//! them in columns and writes a Parquet row group (a block) when the buffer is full or
//! old enough, journals the footer after each block, rotates files on window edges
//! and keeps the archive within its size and age caps.

use std::fs::File;
use std::io::BufWriter;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::data_type::{
    ByteArray, FixedLenByteArray, FixedLenByteArrayType, Int32Type, Int64Type,
};
use parquet::file::metadata::{FileMetaData, ParquetMetaData, ParquetMetaDataWriter};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::{addr_bytes, col, file_for, open_paths, schema};
use crate::decode::FlowRecord;

/// One decoded flow and the exporter it came from.
#[derive(Debug, Clone, Copy)]
pub struct ArchivedFlow {
    pub exporter: IpAddr,
    pub record: FlowRecord,
}

/// The workers' side: never blocks; when the writer falls behind, batches are
/// dropped and counted.
#[derive(Debug, Clone)]
pub struct ArchiveSender {
    tx: crossbeam_channel::Sender<Vec<ArchivedFlow>>,
    pub dropped_flows: Arc<AtomicU64>,
}

impl ArchiveSender {
    pub fn send(&self, flows: Vec<ArchivedFlow>) {
        let n = flows.len() as u64;
        if self.tx.try_send(flows).is_err() {
            self.dropped_flows.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The wall clock windows follow; tests drive their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Archive settings, from the collector's configuration.
#[derive(Clone)]
pub struct ArchiveWriter {
    pub root: PathBuf,
    /// Rotation window; divides a day.
    pub window_secs: i64,
    /// Rows per block (row group).
    pub block_rows: usize,
    /// A block is written at least this often, so a crash loses at most this much.
    pub block_secs: u64,
    pub max_bytes: u64,
    pub max_age_days: u32,
    pub clock: Clock,
}

impl std::fmt::Debug for ArchiveWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("root", &self.root)
            .field("window_secs", &self.window_secs)
            .field("block_rows", &self.block_rows)
            .field("block_secs", &self.block_secs)
            .field("max_bytes", &self.max_bytes)
            .field("max_age_days", &self.max_age_days)
            .finish()
    }
}

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// Flows buffered column by column.
#[derive(Debug, Default)]
struct Columns {
    int64: [Vec<i64>; 5],
    int32: [Vec<i32>; 15],
    addrs: [Vec<u8>; 4],
    rows: usize,
}

/// Which buffer each schema column is in: (kind, index).
fn slot(column: usize) -> (u8, usize) {
    match column {
        col::START_MS => (0, 0),
        col::END_MS => (0, 1),
        col::BYTES => (0, 2),
        col::PACKETS => (0, 3),
        col::FLOWS => (0, 4),
        col::EXPORTER => (2, 0),
        col::SRC_ADDR => (2, 1),
        col::DST_ADDR => (2, 2),
        col::NEXT_HOP => (2, 3),
        // The int32 columns in schema order, skipping the others.
        c => (
            1,
            c - col::SRC_PORT - usize::from(c > col::ICMP_TYPE_CODE) * 3,
        ),
    }
}

impl Columns {
    fn push(&mut self, f: &ArchivedFlow) {
        let r = &f.record;
        for (i, v) in [
            r.start_ms,
            r.end_ms,
            i64::try_from(r.scaled_bytes()).unwrap_or(i64::MAX),
            i64::try_from(r.scaled_packets()).unwrap_or(i64::MAX),
            i64::try_from(r.flows).unwrap_or(i64::MAX),
        ]
        .into_iter()
        .enumerate()
        {
            self.int64[i].push(v);
        }
        // Unsigned values are stored by their bit pattern (the schema says unsigned).
        for (i, v) in [
            u32::from(r.src_port),
            u32::from(r.dst_port),
            u32::from(r.proto),
            u32::from(r.tos),
            u32::from(r.tcp_flags),
            u32::from(r.src_mask),
            u32::from(r.dst_mask),
            r.input_if,
            r.output_if,
            r.src_as,
            r.dst_as,
            u32::from(r.src_vlan.unwrap_or(0)),
            u32::from(r.dst_vlan.unwrap_or(0)),
            u32::from(r.icmp_type_code.unwrap_or(0)),
            r.sampling_rate,
        ]
        .into_iter()
        .enumerate()
        {
            self.int32[i].push(v as i32);
        }
        let none = [0u8; 16];
        for (i, a) in [
            addr_bytes(f.exporter),
            addr_bytes(r.src_addr),
            addr_bytes(r.dst_addr),
            r.next_hop.map_or(none, addr_bytes),
        ]
        .into_iter()
        .enumerate()
        {
            self.addrs[i].extend_from_slice(&a);
        }
        self.rows += 1;
    }

    fn clear(&mut self) {
        self.int64.iter_mut().for_each(Vec::clear);
        self.int32.iter_mut().for_each(Vec::clear);
        self.addrs.iter_mut().for_each(Vec::clear);
        self.rows = 0;
    }
}

struct OpenFile {
    finished: PathBuf,
    open: PathBuf,
    footer: PathBuf,
    window: DateTime<Utc>,
    writer: SerializedFileWriter<BufWriter<File>>,
    rows: i64,
}

fn properties() -> anyhow::Result<Arc<WriterProperties>> {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(9)?))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_offset_index_disabled(true)
        .set_created_by(format!("flowstage {}", env!("CARGO_PKG_VERSION")))
        .set_max_row_group_row_count(None);
    // Times grow steadily: deltas pack them into a few bits each. Counters and
    // ephemeral ports rarely repeat: a dictionary only adds an indirection.
    for name in ["bytes", "packets", "src_port"] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    for name in ["start_ms", "end_ms"] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(name), false)
            .set_column_encoding(ColumnPath::from(name), Encoding::DELTA_BINARY_PACKED);
    }
    Ok(Arc::new(b.build()))
}

impl ArchiveWriter {
    /// Start the writer thread; it ends (writing what it holds and closing its file)
    /// when every sender is gone.
    pub fn spawn(self) -> anyhow::Result<(ArchiveSender, std::thread::JoinHandle<()>)> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        for sealed in super::recover(&self.root)? {
            tracing::info!(file = %sealed.display(), "recovered archive file");
        }
        let (tx, rx) = crossbeam_channel::bounded::<Vec<ArchivedFlow>>(256);
        let sender = ArchiveSender {
            tx,
            dropped_flows: Arc::new(AtomicU64::new(0)),
        };
        let handle = std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                if let Err(e) = self.run(&rx) {
                    tracing::error!("the flow archive stopped: {e:#}");
                    // Keep draining so workers never notice.
                    while rx.recv().is_ok() {}
                }
            })?;
        Ok((sender, handle))
    }

    fn run(&self, rx: &crossbeam_channel::Receiver<Vec<ArchivedFlow>>) -> anyhow::Result<()> {
        let props = properties()?;
        let schema = schema()?;
        let mut buffer = Columns::default();
        let mut current: Option<OpenFile> = None;
        let mut block_started = Instant::now();
        loop {
            let message = rx.recv_timeout(Duration::from_millis(200));
            let now = (self.clock)();
            let window = window_start(now, self.window_secs);
            // A window has ended: what is buffered belongs to it; then close it.
            if current.as_ref().is_some_and(|f| f.window != window) {
                if buffer.rows > 0 {
                    if let Some(f) = current.as_mut() {
                        write_block(f, &mut buffer)?;
                    }
                }
                if let Some(f) = current.take() {
                    finish(f)?;
                }
                self.enforce_caps(now)?;
            }
            let disconnected = match message {
                Ok(flows) => {
                    if buffer.rows == 0 {
                        block_started = Instant::now();
                    }
                    for f in &flows {
                        buffer.push(f);
                    }
                    false
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => true,
            };
            let due = buffer.rows >= self.block_rows
                || (buffer.rows > 0 && block_started.elapsed().as_secs() >= self.block_secs)
                || (disconnected && buffer.rows > 0);
            if due {
                if current.is_none() {
                    current = Some(open(&self.root, window, schema.clone(), props.clone())?);
                }
                if let Some(f) = current.as_mut() {
                    write_block(f, &mut buffer)?;
                }
                block_started = Instant::now();
            }
            if disconnected {
                if let Some(f) = current.take() {
                    finish(f)?;
                }
                self.enforce_caps(now)?;
                return Ok(());
            }
        }
    }

    fn enforce_caps(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let oldest = now - chrono::Duration::days(i64::from(self.max_age_days));
        for f in super::enforce_caps(&self.root, self.max_bytes, oldest, self.window_secs, false)? {
            tracing::info!(file = %f.path.display(), bytes = f.bytes, "archive file removed (size or age cap)");
        }
        Ok(())
    }
}

/// The start of the rotation window holding `t`.
pub fn window_start(t: DateTime<Utc>, window_secs: i64) -> DateTime<Utc> {
    let s = window_secs.max(60);
    DateTime::from_timestamp(t.timestamp().div_euclid(s) * s, 0).unwrap_or(t)
}

fn open(
    root: &std::path::Path,
    window: DateTime<Utc>,
    schema: parquet::schema::types::TypePtr,
    props: Arc<WriterProperties>,
) -> anyhow::Result<OpenFile> {
    let finished = file_for(root, window);
    if let Some(dir) = finished.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (open, footer) = open_paths(&finished);
    // A finished file of this window already exists (a restart within the window):
    // the new one takes the next free name.
    let mut finished = finished;
    let mut n = 1;
    while finished.exists() {
        let stem = finished
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("flows.parquet")
            .trim_end_matches(".parquet")
            .split('.')
            .next()
            .unwrap_or("flows")
            .to_string();
        finished.set_file_name(format!("{stem}.{n}.parquet"));
        n += 1;
    }
    let (open, footer) = if n == 1 {
        (open, footer)
    } else {
        open_paths(&finished)
    };
    let file = File::create(&open).with_context(|| format!("creating {}", open.display()))?;
    let writer = SerializedFileWriter::new(BufWriter::with_capacity(1 << 20, file), schema, props)?;
    Ok(OpenFile {
        finished,
        open,
        footer,
        window,
        writer,
        rows: 0,
    })
}

fn fixed(buffer: &[u8]) -> Vec<FixedLenByteArray> {
    let all = Bytes::copy_from_slice(buffer);
    (0..buffer.len() / 16)
        .map(|i| FixedLenByteArray::from(ByteArray::from(all.slice(i * 16..i * 16 + 16))))
        .collect()
}

impl Columns {
    /// Order the rows by end time: the time deltas become small, and readers can
    /// stop early within a block.
    fn sort_by_end(&mut self) {
        let ends = &self.int64[1];
        let mut order: Vec<u32> = (0..self.rows as u32).collect();
        order.sort_by_key(|&i| ends[i as usize]);
        if order.iter().enumerate().all(|(i, &j)| i == j as usize) {
            return;
        }
        for v in &mut self.int64 {
            *v = order.iter().map(|&i| v[i as usize]).collect();
        }
        for v in &mut self.int32 {
            *v = order.iter().map(|&i| v[i as usize]).collect();
        }
        for v in &mut self.addrs {
            let mut sorted = Vec::with_capacity(v.len());
            for &i in &order {
                let at = i as usize * 16;
                sorted.extend_from_slice(&v[at..at + 16]);
            }
            *v = sorted;
        }
    }
}

/// Write the buffered flows as one row group, then journal the footer.
fn write_block(f: &mut OpenFile, buffer: &mut Columns) -> anyhow::Result<()> {
    buffer.sort_by_end();
    let mut rg = f.writer.next_row_group()?;
    let mut column = 0;
    while let Some(mut c) = rg.next_column()? {
        match slot(column) {
            (0, i) => {
                c.typed::<Int64Type>()
                    .write_batch(&buffer.int64[i], None, None)?;
            }
            (1, i) => {
                c.typed::<Int32Type>()
                    .write_batch(&buffer.int32[i], None, None)?;
            }
            (_, i) => {
                c.typed::<FixedLenByteArrayType>().write_batch(
                    &fixed(&buffer.addrs[i]),
                    None,
                    None,
                )?;
            }
        }
        c.close()?;
        column += 1;
    }
    rg.close()?;
    f.writer.flush()?;
    f.rows += buffer.rows as i64;
    buffer.clear();
    // The footer as it would be if the file ended here; with the data length it
    // lets recover() seal the file after a crash.
    let descr = Arc::new(f.writer.schema_descr().clone());
    let meta = ParquetMetaData::new(
        FileMetaData::new(
            1,
            f.rows,
            Some(format!("flowstage {}", env!("CARGO_PKG_VERSION"))),
            None,
            descr,
            None,
        ),
        f.writer.flushed_row_groups().to_vec(),
    );
    let mut sidecar = (f.writer.bytes_written() as u64).to_le_bytes().to_vec();
    ParquetMetaDataWriter::new(&mut sidecar, &meta).finish()?;
    let tmp = f.footer.with_extension("tmp");
    std::fs::write(&tmp, &sidecar).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &f.footer)?;
    Ok(())
}

fn finish(f: OpenFile) -> anyhow::Result<()> {
    let OpenFile {
        finished,
        open,
        footer,
        writer,
        ..
    } = f;
    writer.close()?;
    std::fs::rename(&open, &finished)
        .with_context(|| format!("renaming {} to {}", open.display(), finished.display()))?;
    let _ = std::fs::remove_file(&footer);
    Ok(())
}
