//! The raw flow archive: every decoded flow (all normalised fields, sampling-scaled,
//! with its exporter) in Parquet files compressed with zstd, one file per rotation
//! window (default five minutes), nested by UTC date, capped by total size and by age,
//! oldest first (flow-capture's `-n`, `-N`, `-E`). `query` reads them back.
//!
//! A file being written is named `.flows-YYYYMMDDHHMM.parquet.open`; after each block
//! (a Parquet row group) the footer describing the blocks so far goes into a sidecar
//! `.flows-….parquet.footer`. After a crash, [`recover`] truncates the open file to its
//! last complete block and appends that footer, so it is readable up to that block.

pub mod filter;
pub mod query;
mod writer;

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Datelike, Timelike, Utc};

pub use writer::{system_clock, window_start, ArchiveSender, ArchiveWriter, ArchivedFlow, Clock};

/// The Parquet schema of an archive file. Addresses are 16 bytes (IPv4 as
/// IPv4-mapped IPv6, `::ffff:a.b.c.d`; "none" as `::`); VLANs and the ICMP type/code
/// are 0 when absent. Bytes and packets are already multiplied by the sampling rate.
pub const SCHEMA: &str = "message flow {
    REQUIRED INT64 start_ms (TIMESTAMP(MILLIS, true));
    REQUIRED INT64 end_ms (TIMESTAMP(MILLIS, true));
    REQUIRED FIXED_LEN_BYTE_ARRAY (16) exporter;
    REQUIRED FIXED_LEN_BYTE_ARRAY (16) src_addr;
    REQUIRED FIXED_LEN_BYTE_ARRAY (16) dst_addr;
    REQUIRED FIXED_LEN_BYTE_ARRAY (16) next_hop;
    REQUIRED INT32 src_port (INTEGER(16, false));
    REQUIRED INT32 dst_port (INTEGER(16, false));
    REQUIRED INT32 proto (INTEGER(8, false));
    REQUIRED INT32 tos (INTEGER(8, false));
    REQUIRED INT32 tcp_flags (INTEGER(8, false));
    REQUIRED INT32 src_mask (INTEGER(8, false));
    REQUIRED INT32 dst_mask (INTEGER(8, false));
    REQUIRED INT32 input_if (INTEGER(32, false));
    REQUIRED INT32 output_if (INTEGER(32, false));
    REQUIRED INT32 src_as (INTEGER(32, false));
    REQUIRED INT32 dst_as (INTEGER(32, false));
    REQUIRED INT32 src_vlan (INTEGER(16, false));
    REQUIRED INT32 dst_vlan (INTEGER(16, false));
    REQUIRED INT32 icmp_type_code (INTEGER(16, false));
    REQUIRED INT64 bytes;
    REQUIRED INT64 packets;
    REQUIRED INT64 flows;
    REQUIRED INT32 sampling_rate (INTEGER(32, false));
}";

/// Column positions in [`SCHEMA`].
pub mod col {
    pub const START_MS: usize = 0;
    pub const END_MS: usize = 1;
    pub const EXPORTER: usize = 2;
    pub const SRC_ADDR: usize = 3;
    pub const DST_ADDR: usize = 4;
    pub const NEXT_HOP: usize = 5;
    pub const SRC_PORT: usize = 6;
    pub const DST_PORT: usize = 7;
    pub const PROTO: usize = 8;
    pub const TOS: usize = 9;
    pub const TCP_FLAGS: usize = 10;
    pub const SRC_MASK: usize = 11;
    pub const DST_MASK: usize = 12;
    pub const INPUT_IF: usize = 13;
    pub const OUTPUT_IF: usize = 14;
    pub const SRC_AS: usize = 15;
    pub const DST_AS: usize = 16;
    pub const SRC_VLAN: usize = 17;
    pub const DST_VLAN: usize = 18;
    pub const ICMP_TYPE_CODE: usize = 19;
    pub const BYTES: usize = 20;
    pub const PACKETS: usize = 21;
    pub const FLOWS: usize = 22;
    pub const SAMPLING_RATE: usize = 23;
    pub const COUNT: usize = 24;
}

pub fn schema() -> anyhow::Result<parquet::schema::types::TypePtr> {
    Ok(Arc::new(
        parquet::schema::parser::parse_message_type(SCHEMA).context("archive schema")?,
    ))
}

/// An address as the archive's 16 bytes.
pub fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The archive's 16 bytes as an address (IPv4-mapped ones as IPv4).
pub fn bytes_addr(b: &[u8]) -> IpAddr {
    let mut octets = [0u8; 16];
    if b.len() == 16 {
        octets.copy_from_slice(b);
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Where the archive of a data directory lives.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("archive")
}

/// The finished file of the window starting at `start`:
/// `archive/2026/12/04/flows-202612042105.parquet`.
pub fn file_for(root: &Path, start: DateTime<Utc>) -> PathBuf {
    root.join(format!(
        "{:04}/{:02}/{:02}/flows-{:04}{:02}{:02}{:02}{:02}.parquet",
        start.year(),
        start.month(),
        start.day(),
        start.year(),
        start.month(),
        start.day(),
        start.hour(),
        start.minute()
    ))
}

/// The window start a finished file's name says.
pub fn window_of(path: &Path) -> Option<DateTime<Utc>> {
    let name = path.file_name()?.to_str()?;
    // `flows-202612042105.parquet`, or `flows-202612042105.1.parquet` after a restart
    // within the window.
    let stamp = name.strip_prefix("flows-")?.strip_suffix(".parquet")?;
    let stamp = stamp.split('.').next()?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M").ok()?;
    Some(t.and_utc())
}

/// A finished archive file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub path: PathBuf,
    pub window: DateTime<Utc>,
    pub bytes: u64,
}

/// Every file under `root` (none when it does not exist).
pub fn files_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// Every finished file, oldest first. Open files (dot files) are not listed.
pub fn list(root: &Path) -> anyhow::Result<Vec<ArchiveFile>> {
    let mut files = Vec::new();
    for path in files_under(root)? {
        if let Some(window) = window_of(&path) {
            let bytes = std::fs::metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            files.push(ArchiveFile {
                path,
                window,
                bytes,
            });
        }
    }
    files.sort_by(|a, b| a.window.cmp(&b.window).then(a.path.cmp(&b.path)));
    Ok(files)
}

/// Remove the oldest finished files until the archive is at most `max_bytes` and
/// nothing ends before `oldest` (window start + `window_secs`); returns what went.
pub fn enforce_caps(
    root: &Path,
    max_bytes: u64,
    oldest: DateTime<Utc>,
    window_secs: i64,
    dry_run: bool,
) -> anyhow::Result<Vec<ArchiveFile>> {
    let files = list(root)?;
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    let mut removed = Vec::new();
    for f in files {
        let too_old = f.window + chrono::Duration::seconds(window_secs) <= oldest;
        if !too_old && total <= max_bytes {
            break;
        }
        if !dry_run {
            std::fs::remove_file(&f.path)
                .with_context(|| format!("removing {}", f.path.display()))?;
            // Empty date directories go too; a non-empty one stays.
            let mut dir = f.path.parent();
            while let Some(d) = dir.filter(|d| *d != root) {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        total = total.saturating_sub(f.bytes);
        removed.push(f);
    }
    Ok(removed)
}

/// The open file and its footer sidecar for a finished path.
fn open_paths(finished: &Path) -> (PathBuf, PathBuf) {
    let dir = finished.parent().unwrap_or(Path::new("."));
    let name = finished
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("flows.parquet");
    (
        dir.join(format!(".{name}.open")),
        dir.join(format!(".{name}.footer")),
    )
}

/// Seal files left open by a crash: truncate each to its last complete block and
/// append the footer written after that block. An open file without any complete
/// block is removed. Returns the files sealed.
pub fn recover(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut sealed = Vec::new();
    for path in files_under(root)? {
        let Some(finished_name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(".open"))
        else {
            continue;
        };
        let finished = path.with_file_name(finished_name);
        let (open, footer) = open_paths(&finished);
        match std::fs::read(&footer) {
            Ok(sidecar) if sidecar.len() > 8 => {
                let (len, tail) = sidecar.split_at(8);
                let mut n = [0u8; 8];
                n.copy_from_slice(len);
                let data_len = u64::from_le_bytes(n);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&open)
                    .with_context(|| format!("opening {}", open.display()))?;
                file.set_len(data_len)?;
                drop(file);
                let mut file = std::fs::OpenOptions::new().append(true).open(&open)?;
                std::io::Write::write_all(&mut file, tail)?;
                file.sync_all()?;
                std::fs::rename(&open, &finished)?;
                let _ = std::fs::remove_file(&footer);
                tracing::warn!(file = %finished.display(), "archive file left open by a crash sealed at its last complete block");
                sealed.push(finished);
            }
            _ => {
                tracing::warn!(file = %open.display(), "archive file left open by a crash had no complete block; removed");
                let _ = std::fs::remove_file(&open);
                let _ = std::fs::remove_file(&footer);
            }
        }
    }
    Ok(sealed)
}

/// The rows a footer sidecar describes (the complete blocks of an open file).
pub fn journaled_rows(sidecar: &Path) -> Option<u64> {
    let bytes = std::fs::read(sidecar).ok()?;
    // 8 bytes of data length, then the metadata, its 4-byte length and "PAR1".
    let metadata = bytes.get(8..bytes.len().checked_sub(8)?)?;
    let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(metadata).ok()?;
    u64::try_from(meta.file_metadata().num_rows()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_nest_by_date_and_parse_back() {
        let t = DateTime::parse_from_rfc3339("2026-12-04T21:05:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let p = file_for(Path::new("/a"), t);
        assert_eq!(p, Path::new("/a/2026/12/04/flows-202612042105.parquet"));
        assert_eq!(window_of(&p), Some(t));
        assert_eq!(
            window_of(Path::new("/a/.flows-202612042105.parquet.open")),
            None
        );
        let (open, footer) = open_paths(&p);
        assert_eq!(
            open,
            Path::new("/a/2026/12/04/.flows-202612042105.parquet.open")
        );
        assert_eq!(
            footer,
            Path::new("/a/2026/12/04/.flows-202612042105.parquet.footer")
        );
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["192.0.2.1", "2001:db8::1", "::"] {
            let ip: IpAddr = a.parse().expect("ip");
            assert_eq!(bytes_addr(&addr_bytes(ip)), ip);
        }
    }
}
