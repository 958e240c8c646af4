//! SNMP polling against a real agent: Debian's net-snmp `snmpd`, started on a free
//! loopback port with a v2c community and a v3 authPriv user, serving this machine's
//! own interface table. Names, speeds, counter deltas, name precedence, a failed poll
//! keeping the last good names, and `status` warning about it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Pg};

const SNMPD: &str = "/usr/sbin/snmpd";

struct Snmpd {
    child: Child,
    port: u16,
}

impl Snmpd {
    fn start(dir: &Path) -> Snmpd {
        let port = support::free_udp_port();
        let conf = dir.join("snmpd.conf");
        std::fs::create_dir_all(dir.join("persist")).unwrap();
        std::fs::write(
            &conf,
            format!(
                "agentAddress udp:127.0.0.1:{port}\n\
                 rocommunity flowtest 127.0.0.1\n\
                 createUser flowuser SHA \"authpass123\" AES \"privpass123\"\n\
                 rouser flowuser priv\n\
                 sysName lab-router-1\n"
            ),
        )
        .unwrap();
        let child = Command::new(SNMPD)
            .args(["-f", "-C", "-c"])
            .arg(&conf)
            .args(["-M", "/dev/null", "-I", "-hrh", "-Lf"])
            .arg(dir.join("snmpd.log"))
            .env("SNMP_PERSISTENT_DIR", dir.join("persist"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting snmpd");
        let snmpd = Snmpd { child, port };
        // Ready when it answers a v2c get.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = snmp2::SyncSession::new_v2c(
                ("127.0.0.1", port),
                b"flowtest",
                Some(Duration::from_millis(300)),
                0,
            )
            .ok()
            .and_then(|mut s| {
                s.get(&snmp2::Oid::from(&[1, 3, 6, 1, 2, 1, 1, 5, 0]).unwrap())
                    .ok()
                    .map(|_| ())
            })
            .is_some();
            if ok {
                return snmpd;
            }
            assert!(
                Instant::now() < deadline,
                "snmpd did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Snmpd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// ifIndex → name of this machine's interfaces, as the kernel has them.
fn local_interfaces() -> BTreeMap<i64, String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let index = std::fs::read_to_string(e.path().join("ifindex")).ok()?;
            Some((
                index.trim().parse().ok()?,
                e.file_name().to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let secrets = dir.join("secrets.toml");
    std::fs::write(
        &secrets,
        "database_password = \"unused\"\n\n\
         [snmp.lab-v2c]\nversion = \"2c\"\ncommunity = \"flowtest\"\n\n\
         [snmp.lab-v3]\nversion = \"3\"\nuser = \"flowuser\"\nauth_protocol = \"sha\"\n\
         auth_password = \"authpass123\"\npriv_protocol = \"aes\"\npriv_password = \"privpass123\"\n\n\
         [snmp.wrong-v3]\nversion = \"3\"\nuser = \"flowuser\"\nauth_protocol = \"sha\"\n\
         auth_password = \"not-the-password\"\npriv_protocol = \"aes\"\npriv_password = \"privpass123\"\n",
    )
    .unwrap();
    let config = dir.join("flowstage.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}\n[snmp]\nsecrets_file = \"{}\"\ntimeout_secs = 1\nretries = 0\n\n\
             [[snmp.target]]\nexporters = [\"127.0.0.1\"]\ncredentials = \"lab-v2c\"\nport = {port}\n\n\
             [[snmp.target]]\nexporters = [\"127.0.0.2\"]\ncredentials = \"lab-v3\"\nagent = \"127.0.0.1\"\nport = {port}\n\n\
             [[snmp.target]]\nexporters = [\"127.0.0.3\"]\ncredentials = \"wrong-v3\"\nagent = \"127.0.0.1\"\nport = {port}\n",
            dir.join("secrets.toml").display()
        ),
    )
    .unwrap();
    config
}

fn poll(config: &Path, url: &str) -> (Output, serde_json::Value) {
    let o = Command::new(support::collector_bin())
        .args(["poll", "--json", "--database", url, "--config"])
        .arg(config)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, json)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn names_speeds_and_counters_from_a_real_agent_v2c_and_v3() {
    if !Path::new(SNMPD).exists() {
        eprintln!("skipped: {SNMPD} is not installed (apt-get install snmpd)");
        return;
    }
    let pg = Pg::shared();
    let (db, url) = pg.create_database("snmp_poll");
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Snmpd::start(dir.path());
    let config = write_config(dir.path(), agent.port, "");

    // The operator's file names one router and describes its loopback.
    let exporters_cfg = dir.path().join("exporters.cfg");
    let routers_cfg = dir.path().join("routers.cfg");
    std::fs::write(&exporters_cfg, "127.0.0.1 core-from-file\n").unwrap();
    std::fs::write(
        &routers_cfg,
        "core-from-file 1 loopback, as the file says\n",
    )
    .unwrap();
    let import = Command::new(env!("CARGO_BIN_EXE_flowstage-setup"))
        .args(["--config"])
        .arg(&config)
        .args(["--database", &url, "routers", "import", "--exporters"])
        .arg(&exporters_cfg)
        .arg("--routers")
        .arg(&routers_cfg)
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", stderr(&import));

    let (o, first) = poll(&config, &url);
    // The wrong v3 password fails that exporter only, and the run says so.
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("1 of 3 SNMP poll(s) failed"),
        "{}",
        stderr(&o)
    );
    let polls = first["polls"].as_array().unwrap();
    let by_exporter = |p: &str| polls.iter().find(|x| x["exporter"] == p).unwrap().clone();
    let kernel = local_interfaces();
    for exporter in ["127.0.0.1", "127.0.0.2"] {
        let p = by_exporter(exporter);
        assert_eq!(p["ok"], true, "{p}");
        assert_eq!(p["sys_name"], "lab-router-1", "{p}");
        assert_eq!(p["interfaces"], kernel.len(), "{p}");
    }
    let wrong = by_exporter("127.0.0.3");
    assert_eq!(wrong["ok"], false);
    let wrong_error = wrong["error"].as_str().unwrap();
    assert!(
        wrong_error.contains("127.0.0.1:") && !wrong_error.contains("not-the-password"),
        "{wrong_error}"
    );

    // Interface names are the kernel's, ifIndex for ifIndex, for both versions.
    let interfaces = |exporter: &str| {
        pg.psql(
            &db,
            &format!(
                "SELECT string_agg(i.ifindex || '=' || coalesce(i.name, '-'), ' ' ORDER BY i.ifindex)
                 FROM interfaces i JOIN exporters e ON e.id = i.exporter_id WHERE host(e.address) = '{exporter}'"
            ),
        )
    };
    let expected: Vec<String> = kernel.iter().map(|(i, n)| format!("{i}={n}")).collect();
    assert_eq!(interfaces("127.0.0.1"), expected.join(" "));
    assert_eq!(interfaces("127.0.0.2"), expected.join(" "));
    let lo = *kernel.iter().find(|(_, n)| *n == "lo").unwrap().0;
    // What net-snmp's own client reads as ifHighSpeed (Mbit/s) of the loopback.
    let get = Command::new("snmpget")
        .args(["-v2c", "-c", "flowtest", "-m", "", "-Oqv"])
        .arg(format!("127.0.0.1:{}", agent.port))
        .arg(format!("1.3.6.1.2.1.31.1.1.1.15.{lo}"))
        .output()
        .expect("snmpget (apt-get install snmp)");
    let high_speed: i64 = String::from_utf8_lossy(&get.stdout).trim().parse().unwrap();
    assert!(high_speed > 0);
    // The file's description wins over SNMP (default precedence); speed from SNMP.
    assert_eq!(
        pg.psql(
            &db,
            &format!(
                "SELECT i.description || '|' || i.speed_bps || '|' || i.oper_status FROM interfaces i
                 JOIN exporters e ON e.id = i.exporter_id WHERE host(e.address) = '127.0.0.1' AND i.ifindex = {lo}"
            )
        ),
        format!("loopback, as the file says|{}|1", high_speed * 1_000_000)
    );
    let names = || {
        pg.psql(
            &db,
            "SELECT string_agg(host(address) || '=' || coalesce(name, '-'), ' ' ORDER BY address) FROM exporters",
        )
    };
    assert_eq!(
        names(),
        "127.0.0.1=core-from-file 127.0.0.2=lab-router-1 127.0.0.3=-"
    );

    // Counters: traffic over loopback between two polls shows up in the deltas.
    std::thread::sleep(Duration::from_millis(1100));
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let source = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload = vec![0u8; 1000];
    for _ in 0..2000 {
        source
            .send_to(&payload, sink.local_addr().unwrap())
            .unwrap();
    }
    let (_, second) = poll(&config, &url);
    assert_eq!(
        by_exporter_in(&second, "127.0.0.1")["counters"],
        kernel.len()
    );
    // snmpd caches the interface table for a few seconds: the traffic shows up in the
    // sum of the deltas of the polls that follow.
    let lo_sum = || -> i64 {
        pg.psql(
            &db,
            &format!(
                "SELECT coalesce(sum(c.in_octets), 0) FROM interface_counters c JOIN exporters e ON e.id = c.exporter_id
                 WHERE host(e.address) = '127.0.0.1' AND c.ifindex = {lo} AND c.source = 'snmp'"
            ),
        )
        .parse()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while lo_sum() < 2000 * 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1500));
        let _ = poll(&config, &url);
    }
    let lo_delta = lo_sum();
    assert!(
        lo_delta >= 2000 * 1000,
        "lo carried at least 2 MB between the polls, the deltas say {lo_delta}"
    );

    // Precedence: SNMP first now; the file's names stay stored and come back with it.
    let other = dir.path().join("snmp-first");
    std::fs::create_dir_all(&other).unwrap();
    let snmp_first = write_config(
        &other,
        agent.port,
        "[names]\nprecedence = [\"snmp\", \"file\"]\n",
    );
    let _ = poll(&snmp_first, &url);
    assert_eq!(
        names(),
        "127.0.0.1=lab-router-1 127.0.0.2=lab-router-1 127.0.0.3=-"
    );
    let _ = poll(&config, &url);
    assert_eq!(
        names(),
        "127.0.0.1=core-from-file 127.0.0.2=lab-router-1 127.0.0.3=-"
    );

    // The agent goes away: the poll fails, every name stays, status warns.
    agent.stop();
    let before = (names(), interfaces("127.0.0.2"));
    let (o, down) = poll(&config, &url);
    assert!(!o.status.success());
    assert_eq!(
        down["polls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["ok"] == true)
            .count(),
        0
    );
    let err = by_exporter_in(&down, "127.0.0.2")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("no answer from 127.0.0.1:"), "{err}");
    assert_eq!((names(), interfaces("127.0.0.2")), before, "names kept");
    let check = support::status_check(&config, &url, "snmp");
    assert_eq!(check["level"], "warn", "{check}");
    let message = check["detail"].as_str().unwrap();
    assert!(
        message.contains("3 of 3 poll(s) failed")
            && message.contains("127.0.0.2: no answer")
            && message.contains("UTC kept"),
        "{message}"
    );
}

#[test]
fn reverse_dns_names_are_optional_and_ranked_by_precedence() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("snmp_dns");
    let dir = tempfile::tempdir().unwrap();
    // What the system resolver says for the address, independently of us.
    let getent = Command::new("getent")
        .args(["hosts", "127.0.0.1"])
        .output()
        .unwrap();
    let resolved = String::from_utf8_lossy(&getent.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_string);
    let Some(resolved) = resolved else {
        eprintln!("skipped: 127.0.0.1 has no reverse name on this machine");
        return;
    };
    let run = |names: &str| {
        let config = dir.path().join("flowstage.toml");
        std::fs::write(&config, names).unwrap();
        let o = Command::new(support::collector_bin())
            .args(["poll", "--database", &url, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        pg.psql(
            &db,
            "SELECT coalesce(name, '-') || '|' || coalesce(dns_name, '-') FROM exporters",
        )
    };
    // The first run creates the schema.
    assert_eq!(run(""), "");
    pg.psql(
        &db,
        "INSERT INTO exporters (address, file_name) VALUES ('127.0.0.1', 'from-file')",
    );
    // Off by default: nothing is looked up.
    assert_eq!(run(""), "from-file|-");
    assert_eq!(
        run("[names]\nreverse_dns = true\n"),
        format!("from-file|{resolved}")
    );
    assert_eq!(
        run("[names]\nreverse_dns = true\nprecedence = [\"dns\", \"file\"]\n"),
        format!("{resolved}|{resolved}")
    );
}

fn by_exporter_in(v: &serde_json::Value, exporter: &str) -> serde_json::Value {
    v["polls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["exporter"] == exporter)
        .unwrap()
        .clone()
}
