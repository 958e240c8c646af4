//! Test support shared by the integration tests: a throwaway PostgreSQL 15 cluster
//! (initdb into a temp dir, unix socket only, torn down when the test process exits),
//! and helpers to run the collector binary against it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod pcap;
pub mod smtp;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster in a temporary directory. The server runs under a small shell
/// guardian that stops it, and removes the directory, as soon as our end of its stdin
/// closes, so the cluster goes away with the test process however that ends.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    guardian: Mutex<Option<(Child, ChildStdin)>>,
}

pub fn free_tcp_port() -> u16 {
    free_port()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn as_postgres(cmd: &str) -> Command {
    // initdb and postgres refuse to run as root; CI runs as root.
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", cmd]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        c
    }
}

impl Pg {
    /// A cluster of this test process's own, shared by its tests (each test makes its
    /// own database with [`Pg::create_database`]).
    pub fn shared() -> &'static Pg {
        static SHARED: OnceLock<Pg> = OnceLock::new();
        SHARED.get_or_init(Pg::start)
    }

    /// A cluster for one test alone (for tests that stop and start it).
    pub fn start() -> Pg {
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "PostgreSQL 15 server binaries missing in {PG_BIN}: apt-get install postgresql-15"
        );
        let dir = tempfile::Builder::new()
            .prefix("flowstage-pg-")
            .tempdir()
            .unwrap();
        if nix::unistd::Uid::effective().is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let out = as_postgres(&format!(
            "{PG_BIN}/initdb -D '{}' -U postgres --auth=trust -E UTF8 --no-sync >'{}/initdb.log' 2>&1",
            data.display(),
            dir.path().display()
        ))
        .status()
        .unwrap();
        assert!(
            out.success(),
            "initdb failed; see {}/initdb.log",
            dir.path().display()
        );
        let pg = Pg {
            port: free_port(),
            dir,
            guardian: Mutex::new(None),
        };
        pg.start_server();
        pg
    }

    fn start_server(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let script = format!(
            "{PG_BIN}/postgres -D '{}' -k '{}' -p {} -c listen_addresses='' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off >>'{}' 2>&1 & pid=$!; \
             read cmd; kill -INT $pid; wait $pid; [ \"$cmd\" = keep ] || rm -rf '{}'",
            data.display(),
            self.dir.path().display(),
            self.port,
            log.display(),
            self.dir.path().display()
        );
        let mut child = as_postgres(&script).stdin(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        *self.guardian.lock().unwrap() = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(format!("{PG_BIN}/pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the server (fast shutdown) and wait for it; the data stays for
    /// [`Pg::restart`].
    pub fn stop(&self) {
        self.halt(true);
    }

    /// Tell the guardian to stop the server, and to keep or remove the cluster. A
    /// guardian whose pipe closes because the test process ended removes it too.
    fn halt(&self, keep: bool) {
        if let Some((mut child, mut stdin)) = self.guardian.lock().unwrap().take() {
            if keep {
                let _ = stdin.write_all(b"keep\n");
            }
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Start it again after [`Pg::stop`].
    pub fn restart(&self) {
        self.start_server();
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql:///{database}?host={}&port={}&user=postgres",
            self.dir.path().display(),
            self.port
        )
    }

    /// A fresh database for one test; returns (name, URL).
    pub fn create_database(&self, name: &str) -> (String, String) {
        static N: AtomicU32 = AtomicU32::new(0);
        let db = format!(
            "{}_{}",
            name.replace('-', "_"),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        let url = self.url(&db);
        (db, url)
    }

    /// Run SQL with psql and return its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.halt(false);
    }
}

/// A running `flowstage-collector run` on a loopback port (and a second one for sFlow,
/// so that parallel tests never share the default 6343).
pub struct Collector {
    child: Child,
    pub port: u16,
    pub sflow_port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

pub fn collector_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flowstage-collector")
}

impl Collector {
    pub fn start(database_url: &str, data_dir: &Path, extra: &[&str]) -> Collector {
        Self::start_on(free_udp_port(), database_url, data_dir, extra)
    }

    pub fn start_on(port: u16, database_url: &str, data_dir: &Path, extra: &[&str]) -> Collector {
        let metrics_port = free_port();
        let sflow_port = free_udp_port();
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.join(format!("collector-{metrics_port}.log"));
        let mut cmd = Command::new(collector_bin());
        cmd.arg("run");
        if !extra.contains(&"--config") {
            cmd.arg("--config").arg(empty_config());
        }
        let child = cmd
            .args(["--database", database_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--sflow-listen", &format!("127.0.0.1:{sflow_port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
            .args(["--stats-interval", "0", "--workers", "2"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let c = Collector {
            child,
            port,
            sflow_port,
            metrics_port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_metrics().is_none() {
            assert!(
                Instant::now() < deadline,
                "collector did not come up:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn target(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Where sFlow agents send.
    pub fn sflow_target(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.sflow_port).into()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_metrics(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(
            body.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    }

    pub fn metrics(&self) -> String {
        self.try_metrics().expect("metrics endpoint")
    }

    /// Sum of a metric's samples whose labels contain every `label` fragment.
    pub fn metric(&self, name: &str, labels: &[&str]) -> u64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Poll until `f` holds (workers publish their counters once a second).
    pub fn wait_for(&self, what: &str, mut f: impl FnMut(&Collector) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}\n{}",
                self.metrics(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, wait, and return the exit status and the log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let status = sigterm_and_wait(&mut self.child);
        let log = self.log_text();
        (status, log)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send SIGTERM to a child process and wait for it to exit.
pub fn sigterm_and_wait(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap()
}

pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric == name && labels.iter().all(|f| rest.contains(f)) {
                value.parse::<u64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// Run `flowstage-collector report --format json` over the last day and parse it.
pub fn report(database_url: &str, by: &str, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(collector_bin());
    cmd.args(["report", "--database", database_url])
        .arg("--config")
        .arg(empty_config());
    cmd.args([
        "--from", "-1d", "--to", "+1h", "--by", by, "--format", "json",
    ]);
    if !extra.contains(&"--top") {
        cmd.args(["--top", "100000"]);
    }
    let out = cmd.args(extra).output().unwrap();
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Run `flowstage-collector report` over the last day with `args` and return its
/// output as text (for the text and CSV formats).
pub fn report_raw(database_url: &str, args: &[&str]) -> String {
    let out = Command::new(collector_bin())
        .args(["report", "--database", database_url])
        .arg("--config")
        .arg(empty_config())
        .args(["--from", "-1d", "--to", "+1h"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Rows of a report as key -> (bytes, packets, flows).
pub fn report_rows(v: &serde_json::Value) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                (
                    r["bytes"].as_u64().unwrap(),
                    r["packets"].as_u64().unwrap(),
                    r["flows"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

pub fn totals(v: &serde_json::Value) -> (u64, u64, u64) {
    let t = &v["total"];
    (
        t["bytes"].as_u64().unwrap(),
        t["packets"].as_u64().unwrap(),
        t["flows"].as_u64().unwrap(),
    )
}

/// The generator's expectation for one `--by` key as key -> (bytes, packets, flows).
pub fn expected_rows(
    e: &flowstage::gen::Expected,
    by: &str,
) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    e.by.get(by)
        .map(|m| {
            m.iter()
                .map(|(k, t)| (k.clone(), (t.bytes, t.packets, t.flows)))
                .collect()
        })
        .unwrap_or_default()
}

/// An empty configuration file, so tests never read a host's real one.
pub fn empty_config() -> &'static Path {
    static EMPTY: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    EMPTY
        .get_or_init(|| tempfile::NamedTempFile::new().unwrap())
        .path()
}

/// Where the collector's data directory goes for a test.
pub fn data_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("flowstage-{name}-"))
        .tempdir()
        .unwrap()
}

/// One check of `flowstage-setup status --json` run with `config` against `database_url`.
pub fn status_check(config: &Path, database_url: &str, name: &str) -> serde_json::Value {
    let status = Command::new(env!("CARGO_BIN_EXE_flowstage-setup"))
        .arg("--config")
        .arg(config)
        .args(["--database", database_url, "status", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
        .clone()
}

/// Each (error kind, protocol) of a malformed corpus is counted against `exporter`
/// exactly as often as the corpus holds it.
pub fn assert_errors_by_kind<'a>(
    metrics: &str,
    exporter: &str,
    corpus: impl Iterator<Item = (&'a str, &'a str)>,
) {
    let mut want: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for key in corpus {
        *want.entry(key).or_default() += 1;
    }
    for ((kind, protocol), expected) in want {
        let got = metric_sum(
            metrics,
            "flowstage_exporter_decode_errors_total",
            &[
                &format!("exporter=\"{exporter}\""),
                &format!("protocol=\"{protocol}\""),
                &format!("kind=\"{kind}\""),
            ],
        );
        assert_eq!(
            got, expected,
            "{kind} ({protocol}) counted against {exporter}\n{metrics}"
        );
    }
}
