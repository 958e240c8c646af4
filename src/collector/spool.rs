//! The on-disk spool under `<data_dir>/spool`: finished batches wait here, one file
//! each, while the database is away, and are replayed oldest first. Files are written to
//! a temporary name, synced and renamed, so a crash never leaves a half batch behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::batch::Batch;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    bytes: u64,
    files: usize,
    next_seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SpoolOutcome {
    Stored,
    /// The spool is at its size limit; the batch was not stored.
    Full,
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Spool> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating spool directory {}", dir.display()))?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            bytes: 0,
            files: 0,
            next_seq: 0,
        };
        for (seq, path) in spool.entries()? {
            spool.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            spool.next_seq = spool.next_seq.max(seq + 1);
            spool.files += 1;
        }
        // Leftovers of a write interrupted before its rename are not batches.
        for entry in fs::read_dir(dir)?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(spool)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Spooled batch files, oldest first.
    pub fn entries(&self) -> anyhow::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "batch") {
                if let Some(seq) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
                {
                    out.push((seq, path));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.files == 0
    }

    pub fn push(&mut self, batch: &Batch) -> anyhow::Result<SpoolOutcome> {
        let data = serde_json::to_vec(batch).context("encoding batch")?;
        if self.bytes + data.len() as u64 > self.max_bytes {
            return Ok(SpoolOutcome::Full);
        }
        let path = self.dir.join(format!("{:020}.batch", self.next_seq));
        let tmp = path.with_extension("tmp");
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        self.next_seq += 1;
        self.files += 1;
        self.bytes += data.len() as u64;
        Ok(SpoolOutcome::Stored)
    }

    pub fn read(&self, path: &Path) -> anyhow::Result<Batch> {
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&data)
            .with_context(|| format!("decoding spooled batch {}", path.display()))
    }

    pub fn remove(&mut self, path: &Path) -> anyhow::Result<()> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        self.bytes = self.bytes.saturating_sub(len);
        self.files = self.files.saturating_sub(1);
        Ok(())
    }

    /// Move a batch the database refuses (not an outage) aside for inspection.
    pub fn reject(&mut self, path: &Path) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("rejected");
        fs::create_dir_all(&dir)?;
        let target = dir.join(path.file_name().unwrap_or_default());
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::rename(path, &target)?;
        self.bytes = self.bytes.saturating_sub(len);
        self.files = self.files.saturating_sub(1);
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::batch::{Batch, Bucket, Direction};
    use crate::totals::Totals;

    fn batch(id: &str) -> Batch {
        Batch {
            id: id.to_string(),
            buckets: vec![Bucket {
                minute: 1_700_000_040,
                exporter: "192.0.2.1".parse().unwrap(),
                ifindex: 3,
                direction: Direction::In,
                totals: vec![(
                    1,
                    Totals {
                        bytes: 100,
                        packets: 2,
                        flows: 1,
                    },
                )],
                dimensions: Vec::new(),
            }],
            counters: Vec::new(),
        }
    }

    #[test]
    fn batches_come_back_in_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());
        spool.push(&batch("a")).unwrap();
        spool.push(&batch("b")).unwrap();
        // A write interrupted before its rename is not a batch.
        std::fs::write(dir.path().join("00000000000000000009.tmp"), b"{").unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&batch("c")).unwrap();
        let ids: Vec<String> = spool
            .entries()
            .unwrap()
            .iter()
            .map(|(_, p)| spool.read(p).unwrap().id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
        let bytes = spool.bytes();
        let (_, first) = spool.entries().unwrap()[0].clone();
        spool.remove(&first).unwrap();
        assert!(spool.bytes() < bytes);
        assert_eq!(spool.entries().unwrap().len(), 2);
    }

    #[test]
    fn a_full_spool_refuses_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let size = serde_json::to_vec(&batch("a")).unwrap().len() as u64;
        let mut spool = Spool::open(dir.path(), size * 2).unwrap();
        assert_eq!(spool.push(&batch("a")).unwrap(), SpoolOutcome::Stored);
        assert_eq!(spool.push(&batch("b")).unwrap(), SpoolOutcome::Stored);
        assert_eq!(spool.push(&batch("c")).unwrap(), SpoolOutcome::Full);
        assert_eq!(spool.entries().unwrap().len(), 2);
        assert_eq!(spool.bytes(), size * 2);
    }
}
