//! Managed files as plans: what a file should contain is rendered in memory, compared
//! with the disk, shown as a unified diff, and only then written: atomically (temp file
//! and rename in the same directory), after the previous version went to
//! `/var/backups/flowstage/<time>/`, and rolled back if a later write of the same step
//! fails. `status` uses the same comparison to report drift.
//!
//! A file is either wholly managed (it carries a "Managed by Flowstage" header) or
//! Flowstage owns one marked block in it and leaves everything else alone.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::host::Host;

pub const BLOCK_BEGIN: &str =
    "# BEGIN FLOWSTAGE MANAGED BLOCK (flowstage-setup rewrites this block)";
pub const BLOCK_END: &str = "# END FLOWSTAGE MANAGED BLOCK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockPlace {
    /// First in the file (pg_hba.conf: the first matching line wins).
    Top,
    /// Last in the file (postfix main.cf: the last setting wins).
    Bottom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Managed {
    Whole(Vec<u8>),
    Block { place: BlockPlace, body: String },
}

/// Something a changed file requires afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Affects {
    Collector,
    Web,
    TimeDaemon,
    Postfix,
    Aliases,
    Postgres,
    Sysctl,
    Units,
}

/// What Flowstage wants at one path.
#[derive(Debug, Clone)]
pub struct DesiredFile {
    /// Absolute path on the host.
    pub path: PathBuf,
    pub managed: Managed,
    pub mode: u32,
    /// User and group names; applied on the live host only.
    pub owner: Option<(&'static str, &'static str)>,
    /// Secret contents: never shown in a diff.
    pub secret: bool,
    pub affects: Vec<Affects>,
}

impl DesiredFile {
    pub fn whole(path: &str, content: impl Into<Vec<u8>>, mode: u32) -> DesiredFile {
        DesiredFile {
            path: PathBuf::from(path),
            managed: Managed::Whole(content.into()),
            mode,
            owner: None,
            secret: false,
            affects: Vec::new(),
        }
    }

    pub fn block(path: &str, place: BlockPlace, body: String, mode: u32) -> DesiredFile {
        DesiredFile {
            path: PathBuf::from(path),
            managed: Managed::Block { place, body },
            mode,
            owner: None,
            secret: false,
            affects: Vec::new(),
        }
    }

    pub fn owned_by(mut self, user: &'static str, group: &'static str) -> DesiredFile {
        self.owner = Some((user, group));
        self
    }

    pub fn secret(mut self) -> DesiredFile {
        self.secret = true;
        self
    }

    pub fn affecting(mut self, a: Affects) -> DesiredFile {
        self.affects.push(a);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Unchanged,
    Create,
    Update,
    /// Same contents, wrong mode or owner.
    Metadata,
}

/// A desired file compared with the disk.
#[derive(Debug, Clone)]
pub struct FileChange {
    pub desired: DesiredFile,
    pub current: Option<Vec<u8>>,
    pub new: Vec<u8>,
    pub kind: ChangeKind,
    /// Why the metadata differs, e.g. "mode 0644, want 0600".
    pub metadata_note: Option<String>,
}

impl FileChange {
    pub fn changed(&self) -> bool {
        self.kind != ChangeKind::Unchanged
    }

    /// A unified diff of the change (or a note for binary and secret files).
    pub fn diff(&self) -> String {
        let path = self.desired.path.display();
        match self.kind {
            ChangeKind::Unchanged => String::new(),
            ChangeKind::Metadata => format!(
                "{path}: {}\n",
                self.metadata_note.as_deref().unwrap_or("metadata differs")
            ),
            _ if self.desired.secret => {
                format!("{path}: secret file, contents not shown\n")
            }
            _ => {
                let old = self.current.as_deref().unwrap_or_default();
                match (std::str::from_utf8(old), std::str::from_utf8(&self.new)) {
                    (Ok(old_text), Ok(new_text)) => {
                        similar::TextDiff::from_lines(old_text, new_text)
                            .unified_diff()
                            .context_radius(3)
                            .header(
                                &if self.current.is_some() {
                                    format!("{path} (on disk)")
                                } else {
                                    "/dev/null".to_string()
                                },
                                &format!("{path} (flowstage)"),
                            )
                            .to_string()
                    }
                    _ => format!(
                        "{path}: binary file differs ({} bytes on disk, {} bytes new)\n",
                        old.len(),
                        self.new.len()
                    ),
                }
            }
        }
    }
}

impl fmt::Display for FileChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ChangeKind::Unchanged => "unchanged",
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Metadata => "fix mode/owner",
        };
        write!(f, "{what} {}", self.desired.path.display())
    }
}

fn block_text(body: &str) -> String {
    let mut text = format!("{BLOCK_BEGIN}\n{body}");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(BLOCK_END);
    text.push('\n');
    text
}

/// The byte range of the managed block (both marker lines included) in `text`.
fn block_range(text: &str) -> Option<(usize, usize)> {
    let begin = text
        .match_indices(BLOCK_BEGIN)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')?;
    let end_rel = text[begin..].find(BLOCK_END)?;
    let mut end = begin + end_rel + BLOCK_END.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    Some((begin, end))
}

/// `existing` with the managed block set to `body`, in place if present.
pub fn splice_block(existing: &str, place: BlockPlace, body: &str) -> String {
    let block = block_text(body);
    if let Some((b, e)) = block_range(existing) {
        return format!("{}{block}{}", &existing[..b], &existing[e..]);
    }
    match place {
        BlockPlace::Top => format!("{block}{existing}"),
        BlockPlace::Bottom => {
            let mut out = existing.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&block);
            out
        }
    }
}

/// `existing` without the managed block; `None` when there was none.
pub fn remove_block(existing: &str) -> Option<String> {
    let (b, e) = block_range(existing)?;
    Some(format!("{}{}", &existing[..b], &existing[e..]))
}

/// The managed block's body as it is on disk, if present.
pub fn block_body(existing: &str) -> Option<&str> {
    let (b, e) = block_range(existing)?;
    let inner = &existing[b + BLOCK_BEGIN.len()..e];
    let inner = inner.strip_prefix('\n').unwrap_or(inner);
    inner.rsplit_once(BLOCK_END).map(|(body, _)| body)
}

fn uid_gid(owner: (&str, &str)) -> Option<(u32, u32)> {
    let user = nix::unistd::User::from_name(owner.0).ok().flatten()?;
    let group = nix::unistd::Group::from_name(owner.1).ok().flatten()?;
    Some((user.uid.as_raw(), group.gid.as_raw()))
}

/// Compare one desired file with the disk.
pub fn compare(host: &Host, desired: DesiredFile) -> anyhow::Result<FileChange> {
    let on_disk = host.path(&desired.path);
    let (current, meta) = match std::fs::read(&on_disk) {
        Ok(bytes) => (Some(bytes), std::fs::metadata(&on_disk).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", on_disk.display())),
    };
    let new = match &desired.managed {
        Managed::Whole(bytes) => bytes.clone(),
        Managed::Block { place, body } => {
            let existing = current
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            splice_block(&existing, *place, body).into_bytes()
        }
    };
    let mut metadata_note = None;
    let kind = match (&current, &meta) {
        (None, _) => ChangeKind::Create,
        (Some(old), _) if *old != new => ChangeKind::Update,
        (Some(_), Some(meta)) => {
            let mode = meta.permissions().mode() & 0o7777;
            let owner_ok = match desired.owner.filter(|_| host.is_live()).and_then(uid_gid) {
                Some((uid, gid)) => meta.uid() == uid && meta.gid() == gid,
                None => true,
            };
            if mode != desired.mode {
                metadata_note = Some(format!("mode {mode:04o}, want {:04o}", desired.mode));
                ChangeKind::Metadata
            } else if !owner_ok {
                let (u, g) = desired.owner.unwrap_or(("root", "root"));
                metadata_note = Some(format!("owner is not {u}:{g}"));
                ChangeKind::Metadata
            } else {
                ChangeKind::Unchanged
            }
        }
        (Some(_), None) => ChangeKind::Unchanged,
    };
    Ok(FileChange {
        desired,
        current,
        new,
        kind,
        metadata_note,
    })
}

pub fn compare_all(host: &Host, desired: Vec<DesiredFile>) -> anyhow::Result<Vec<FileChange>> {
    desired.into_iter().map(|d| compare(host, d)).collect()
}

/// One run's backup directory, created on first use.
#[derive(Debug)]
pub struct Backup {
    dir: PathBuf,
    used: bool,
}

pub const BACKUP_ROOT: &str = "/var/backups/flowstage";

impl Backup {
    pub fn new(host: &Host) -> Backup {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
        Backup {
            dir: host.path(format!("{BACKUP_ROOT}/{stamp}")),
            used: false,
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.used.then_some(self.dir.as_path())
    }

    fn ensure(&mut self) -> anyhow::Result<()> {
        if !self.used {
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("creating {}", self.dir.display()))?;
            if let Some(parent) = self.dir.parent() {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
            }
            self.used = true;
        }
        Ok(())
    }

    fn note(&mut self, line: &str) -> anyhow::Result<()> {
        self.ensure()?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("MANIFEST"))?;
        writeln!(f, "{line}")?;
        Ok(())
    }

    /// Keep the previous version of `path` (or note that Flowstage created it).
    fn save(&mut self, path: &Path, current: Option<&[u8]>, mode: u32) -> anyhow::Result<()> {
        match current {
            Some(bytes) => {
                self.ensure()?;
                let copy = self.dir.join(path.strip_prefix("/").unwrap_or(path));
                if let Some(parent) = copy.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&copy, bytes)
                    .with_context(|| format!("backing up to {}", copy.display()))?;
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode & 0o700))?;
                self.note(&format!("saved {}", path.display()))
            }
            None => self.note(&format!("created {}", path.display())),
        }
    }
}

/// What an earlier run recorded about a path: the oldest record wins, because it
/// describes the host before Flowstage touched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Original {
    /// The file did not exist before Flowstage.
    Absent,
    /// The file's content before Flowstage, kept at this backup path.
    Saved(PathBuf),
}

/// The original of `path` according to the backups, if Flowstage ever changed it.
pub fn original(host: &Host, path: &Path) -> Option<Original> {
    let root = host.path(BACKUP_ROOT);
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    runs.sort();
    for run in runs {
        let Ok(manifest) = std::fs::read_to_string(run.join("MANIFEST")) else {
            continue;
        };
        for line in manifest.lines() {
            match line.split_once(' ') {
                Some(("created", p)) if Path::new(p) == path => return Some(Original::Absent),
                Some(("saved", p)) if Path::new(p) == path => {
                    return Some(Original::Saved(
                        run.join(path.strip_prefix("/").unwrap_or(path)),
                    ))
                }
                _ => {}
            }
        }
    }
    None
}

/// Write `bytes` to `target` through a temporary file in the same directory, with mode
/// and owner set before the rename.
pub fn write_atomically(
    host: &Host,
    target: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let dir = target
        .parent()
        .with_context(|| format!("{} has no parent directory", target.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.flowstage-tmp"));
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)?;
        f.write_all(bytes)?;
        // Mode and owner are right before the file appears under its name.
        if let Some((uid, gid)) = owner.filter(|_| host.is_live()).and_then(uid_gid) {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", target.display()))
}

trait OpenMode {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenMode for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Apply the changed files of one step: back up, write atomically, and if any write
/// fails restore the files this call already changed.
pub fn apply(host: &Host, changes: &[FileChange], backup: &mut Backup) -> anyhow::Result<usize> {
    let mut done: Vec<&FileChange> = Vec::new();
    for change in changes.iter().filter(|c| c.changed()) {
        let result = (|| -> anyhow::Result<()> {
            let d = &change.desired;
            if change.kind != ChangeKind::Metadata {
                backup.save(&d.path, change.current.as_deref(), d.mode)?;
            }
            write_atomically(host, &host.path(&d.path), &change.new, d.mode, d.owner)
        })();
        match result {
            Ok(()) => {
                host.log(format!("{change}"));
                done.push(change);
            }
            Err(e) => {
                for undo in done.iter().rev() {
                    let target = host.path(&undo.desired.path);
                    let restored = match &undo.current {
                        Some(old) => write_atomically(host, &target, old, undo.desired.mode, None),
                        None => std::fs::remove_file(&target).map_err(Into::into),
                    };
                    if let Err(re) = restored {
                        host.log(format!("rollback of {} failed: {re:#}", target.display()));
                    }
                }
                return Err(e.context(format!("rolled back {} file(s) of this step", done.len())));
            }
        }
    }
    Ok(done.len())
}
