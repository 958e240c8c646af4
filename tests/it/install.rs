//! The real thing: `flowstage-setup install` on this machine (root, Debian 12), with
//! packages, PostgreSQL, postfix, the flowstage user and both daemons started the way
//! the host starts services; then status, traffic into the installed collector and out
//! of `report`, two reconfigures, and uninstall. It changes the host, so it only runs
//! when `FLOWSTAGE_E2E_INSTALL=1` (scripts/test.sh sets it when run as root).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support;

fn setup_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flowstage-setup")
}

fn setup(args: &[&str]) -> Output {
    Command::new(setup_bin())
        .args(args)
        .env_remove("FLOWSTAGE_SETUP_BINARIES_FROM")
        .env_remove("FLOWSTAGE_SETUP_ABORT_AFTER")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Checks that may warn on a CI machine, with the reason documented in
/// docs/operator-guide.md: no traffic has been stored yet, or nothing reports the
/// clock as synchronised (the CI answers leave time keeping to the host).
const ALLOWED_WARNINGS: [&str; 3] = ["time sync", "collector receiving", "newest bucket"];

fn status_json() -> serde_json::Value {
    let o = setup(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&o)));
    let code = o.status.code().unwrap();
    let worst = if v["fail"] != 0 {
        2
    } else if v["warn"] != 0 {
        1
    } else {
        0
    };
    assert_eq!(code, worst, "status exit code vs its report: {v}");
    v
}

fn assert_healthy(v: &serde_json::Value, allowed: &[&str]) {
    for c in v["checks"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        match c["level"].as_str().unwrap() {
            "ok" => {}
            "warn" if allowed.contains(&name) => {}
            other => panic!("status: {name} is {other}: {}\n{v:#}", c["detail"]),
        }
    }
}

fn running(service: &str) -> bool {
    Path::new(&format!("/run/flowstage/{service}.pid")).exists()
        && std::fs::read_to_string(format!("/run/flowstage/{service}.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        || Command::new("systemctl")
            .args(["is-active", "--quiet", service])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn install_status_traffic_reconfigure_uninstall_on_this_machine() {
    if std::env::var("FLOWSTAGE_E2E_INSTALL").as_deref() != Ok("1") {
        eprintln!(
            "skipping: set FLOWSTAGE_E2E_INSTALL=1 (as root, on Debian) to install on this machine"
        );
        return;
    }
    let answers = Path::new(env!("CARGO_MANIFEST_DIR")).join("provision/ci-answers.toml");
    // A first run dies right after the database step (packages, postfix and PostgreSQL
    // done, no binaries or services yet); the next run must finish the job.
    let aborted = Command::new(setup_bin())
        .args(["install", "--answers", answers.to_str().unwrap(), "--yes"])
        .env("FLOWSTAGE_SETUP_ABORT_AFTER", "postgresql")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(aborted.status.code(), Some(99), "{}", text(&aborted));
    let o = setup(&["install", "--answers", answers.to_str().unwrap(), "--yes"]);
    assert!(o.status.success(), "install: {}", text(&o));
    assert!(
        text(&o).contains("Web UI:  https://127.0.0.1:8443/"),
        "{}",
        text(&o)
    );
    assert!(running("flowstage-collector") && running("flowstage-web"));
    // Where systemd is not PID 1 the daemons run from the SysV init scripts.
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" {
        for service in ["flowstage-collector", "flowstage-web"] {
            assert!(
                Path::new(&format!("/run/flowstage/{service}.pid")).exists(),
                "{service} was not started by its init script"
            );
        }
    }
    for package in ["postgresql", "postfix", "snmp", "cron"] {
        let q = Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", package])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&q.stdout).contains("install ok installed"),
            "{package} is not installed"
        );
    }
    assert_healthy(&status_json(), &ALLOWED_WARNINGS);
    // The hourly status mail goes through the installed postfix's sendmail (it mails
    // when the result changed since the last one: forget the last one).
    let _ = std::fs::remove_file("/var/lib/flowstage/status-last");
    let mail = setup(&["status", "--mail"]);
    assert!(
        text(&mail).contains("mailed ") && text(&mail).contains("] status: "),
        "{}",
        text(&mail)
    );
    // The first admin exists, with its password only in a root-only file.
    let password_file = Path::new("/etc/flowstage/initial_admin_password");
    let mode = std::fs::metadata(password_file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let list = setup(&["users", "list"]);
    assert!(
        text(&list).contains("admin") && text(&list).contains("never logged in"),
        "{}",
        text(&list)
    );

    // Traffic into the installed collector comes out of report exactly (on top of
    // whatever an earlier install on this machine left in its database).
    let stored_before = stored_totals();
    let dir = tempfile::tempdir().unwrap();
    let expected_file = dir.path().join("expected.json");
    let gen = Command::new(support::collector_bin())
        .args([
            "gen",
            "--target",
            "127.0.0.1:2055",
            "--protocol",
            "ipfix",
            "--flows",
            "6000",
        ])
        .args(["--exporters", "2", "--expected"])
        .arg(&expected_file)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", text(&gen));
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&expected_file).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = status_json();
        let exporters = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("exporter 127.0.0."))
            .count();
        if exporters == 2 {
            // The generator's exporters have no names yet.
            assert_healthy(&v, &["time sync", "newest bucket", "exporter names"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "collector never counted both exporters: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A restart flushes every open bucket (SIGTERM), as an operator's would.
    let restart = if Path::new("/run/systemd/system").exists() {
        Command::new("systemctl")
            .args(["restart", "flowstage-collector"])
            .status()
    } else {
        Command::new("/etc/init.d/flowstage-collector")
            .arg("restart")
            .status()
    };
    assert!(restart.unwrap().success());
    let stored = stored_totals();
    for (i, what) in ["bytes", "packets", "flows"].iter().enumerate() {
        assert_eq!(
            stored[i] - stored_before[i],
            expected["total"][what].as_u64().unwrap(),
            "{what}: before {stored_before:?}, after {stored:?}"
        );
    }
    // The cron lines' (and timers') jobs run as the flowstage user with the installed
    // configuration, and reports over the rollups keep the same totals.
    // The poll, alert and summary jobs too: the summary goes to the admin through the
    // installed postfix's sendmail.
    for job in [
        &["rollup"][..],
        &["purge"],
        &["poll"],
        &["alerts"],
        &["summary", "--mail"],
    ] {
        let o = Command::new("runuser")
            .args([
                "-u",
                "flowstage",
                "--",
                "/usr/local/bin/flowstage-collector",
            ])
            .args(job)
            .args(["--config", "/etc/flowstage/flowstage.toml"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{job:?}: {}", text(&o));
    }
    assert_eq!(stored_totals(), stored, "totals after rollup and purge");
    // The restarted collector has not heard from anyone yet; the stored data is fresh.
    // The generator's exporters are registered, without names: status says so.
    let v = status_json();
    assert_healthy(&v, &["time sync", "collector receiving", "exporter names"]);
    let names = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "exporter names")
        .unwrap();
    assert_eq!(names["level"], "warn", "{names}");
    assert!(
        names["detail"].as_str().unwrap().contains("127.0.0."),
        "{names}"
    );

    // Reconfigure twice: the second changes nothing.
    let first = setup(&["reconfigure"]);
    assert!(first.status.success(), "{}", text(&first));
    let second = setup(&["reconfigure"]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("no changes"), "{}", text(&second));

    // An operator's edit of the configuration restarts the daemons that read it, once.
    let pid = |service: &str| {
        std::fs::read_to_string(format!("/run/flowstage/{service}.pid")).unwrap_or_default()
    };
    let before = pid("flowstage-collector");
    let config = std::fs::read_to_string("/etc/flowstage/flowstage.toml").unwrap();
    std::fs::write(
        "/etc/flowstage/flowstage.toml",
        config.replace("[collector]\n", "[collector]\ntop_n = 150\n"),
    )
    .unwrap();
    let edited = setup(&["reconfigure"]);
    assert!(edited.status.success(), "{}", text(&edited));
    assert!(
        text(&edited).contains("restart flowstage-collector"),
        "{}",
        text(&edited)
    );
    assert!(running("flowstage-collector"));
    if !Path::new("/run/systemd/system").exists() {
        assert_ne!(before, pid("flowstage-collector"));
    }
    let again = setup(&["reconfigure"]);
    assert!(text(&again).contains("no changes"), "{}", text(&again));

    let o = setup(&["uninstall", "--yes"]);
    assert!(o.status.success(), "uninstall: {}", text(&o));
    assert!(!running("flowstage-collector") && !running("flowstage-web"));
    assert!(!Path::new("/usr/local/bin/flowstage-collector").exists());
    assert!(!Path::new("/etc/init.d/flowstage-web").exists());
    let hba = std::fs::read_to_string("/etc/postgresql/15/main/pg_hba.conf").unwrap();
    assert!(!hba.contains("FLOWSTAGE"), "{hba}");
    assert!(Path::new("/etc/flowstage/secrets.toml").exists());
    assert_eq!(
        psql("SELECT count(*) FROM pg_database WHERE datname = 'flowstage'"),
        "1"
    );

    let o = setup(&["uninstall", "--yes", "--purge-data"]);
    assert!(o.status.success(), "uninstall --purge-data: {}", text(&o));
    assert_eq!(
        psql("SELECT count(*) FROM pg_database WHERE datname = 'flowstage'"),
        "0"
    );
    assert_eq!(
        psql("SELECT count(*) FROM pg_roles WHERE rolname = 'flowstage'"),
        "0"
    );
    assert!(!Path::new("/etc/flowstage").exists());
    assert!(!Path::new("/var/lib/flowstage").exists());
    let user = Command::new("getent")
        .args(["passwd", "flowstage"])
        .output()
        .unwrap();
    assert!(!user.status.success(), "the flowstage user is still there");
}

/// (bytes, packets, flows) stored so far, from the installed `report`.
fn stored_totals() -> [u64; 3] {
    let report = Command::new("/usr/local/bin/flowstage-collector")
        .args([
            "report", "--by", "total", "--from", "-1d", "--to", "+1h", "--format", "json",
        ])
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", text(&report));
    let got: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    ["bytes", "packets", "flows"].map(|k| got["total"][k].as_u64().unwrap())
}

fn psql(sql: &str) -> String {
    let o = Command::new("runuser")
        .args([
            "-u", "postgres", "--", "psql", "-X", "-qtA", "-d", "postgres", "-c", sql,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
