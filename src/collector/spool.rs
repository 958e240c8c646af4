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
