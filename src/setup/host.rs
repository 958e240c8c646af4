//! The machine `flowstage-setup` works on: where its files are (the real `/` or a
//! `--root` directory), whether host actions (packages, services, SQL) may run, the
//! per-run log file, and running commands with their output logged, never printed.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::Context;

#[derive(Debug)]
pub struct Host {
    /// `--root DIR`: every file is read and written under DIR; host actions are skipped.
    pub root: Option<PathBuf>,
    log: RefCell<Option<File>>,
    log_path: Option<PathBuf>,
}

impl Host {
    pub fn new(root: Option<PathBuf>) -> Host {
        Host {
            root,
            log: RefCell::new(None),
            log_path: None,
        }
    }

    /// True when this is the live machine: packages, services and SQL really run.
    pub fn is_live(&self) -> bool {
        self.root.is_none()
    }

    /// Where the host path `p` (absolute) is on this machine.
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        match &self.root {
            Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        }
    }

    /// Open `/var/log/flowstage/setup-<time>.log` (under the root) for this run.
    pub fn open_log(&mut self, command: &str) -> anyhow::Result<()> {
        let dir = self.path("/var/log/flowstage");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let path = dir.join(format!("setup-{stamp}-{command}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening log file {}", path.display()))?;
        self.log = RefCell::new(Some(file));
        self.log_path = Some(path);
        Ok(())
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// Append a line to the run's log file (if any).
    pub fn log(&self, line: impl AsRef<str>) {
        if let Some(f) = self.log.borrow_mut().as_mut() {
            let now = chrono::Utc::now().format("%H:%M:%S%.3f");
            let _ = writeln!(f, "{now} {}", line.as_ref());
        }
    }

    /// Run a command to completion, logging the command line and its output. A non-zero
    /// exit is an error quoting the end of its stderr.
    pub fn run(&self, cmd: &mut Command) -> anyhow::Result<Output> {
        self.run_with_input(cmd, None)
    }

    /// Like [`Host::run`], feeding `input` on stdin (used for SQL with passwords, which
    /// must not appear in argv or in the log).
    pub fn run_with_input(&self, cmd: &mut Command, input: Option<&str>) -> anyhow::Result<Output> {
        let shown = format!("{cmd:?}");
        self.log(format!("$ {shown}"));
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .with_context(|| format!("writing to {shown}"))?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {shown}"))?;
        for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                self.log(format!("  {name}: {line}"));
            }
        }
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!("{shown} failed ({}): {}", out.status, tail.join(" / "));
        }
        Ok(out)
    }

    /// Run and return stdout as text; errors are only logged and give `None` (probes).
    pub fn probe(&self, cmd: &mut Command) -> Option<String> {
        self.run(cmd)
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

/// True when systemd is PID 1 (otherwise services use SysV init scripts).
pub fn systemd_is_pid1() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// True when the command is on PATH.
pub fn have_command(name: &str) -> bool {
    which::which(name).is_ok()
}
