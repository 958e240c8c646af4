//! Alert rules: every kind fires once and clears once, with exactly one mail each,
//! captured by an SMTP sink on loopback; a repeated evaluation sends nothing; the
//! active alerts show in `status`. And the collector's per-minute exporter health,
//! which the rules read, against the collector's own counters.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::smtp::SmtpSink;
use crate::support::{self, Collector, Pg};

const T0: &str = "2026-06-01T12:00:00Z";

fn alerts(config: &Path, url: &str, now: &str) -> (Output, serde_json::Value) {
    let o = Command::new(support::collector_bin())
        .args([
            "alerts",
            "--json",
            "--database",
            url,
            "--now",
            now,
            "--config",
        ])
        .arg(config)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

fn names(list: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["rule"].as_str().unwrap(),
                a["subject"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_rule_fires_and_clears_once_with_one_mail_each() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("alerts_rules");
    let sink = SmtpSink::start();
    let data = support::data_dir("alerts");
    let config = data.path().join("flowstage.toml");
    // The archive rule watches the file system under the data directory: thresholds
    // below and above what df says it is now.
    let df = Command::new("df")
        .arg("--output=pcent")
        .arg(data.path())
        .output()
        .unwrap();
    let used: f64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    let write_config = |archive_percent: f64| {
        std::fs::write(
        &config,
        format!(
            "[site]\nname = \"lab\"\nadmin_email = \"noc@example.net\"\n\n\
             [collector]\ndata_dir = \"{}\"\nspool_max_bytes = 1000\narchive_max_bytes = 1048576\n\n\
             [alerts]\nsmtp = \"{}\"\n\n\
             [[alerts.rule]]\nname = \"exporter silent\"\nkind = \"silent\"\nminutes = 10\n\n\
             [[alerts.rule]]\nname = \"flow loss\"\nkind = \"loss\"\nminutes = 10\npercent = 5\n\n\
             [[alerts.rule]]\nname = \"decode errors\"\nkind = \"decode_errors\"\nminutes = 10\ncount = 100\n\n\
             [[alerts.rule]]\nname = \"interface busy\"\nkind = \"interface_utilisation\"\nminutes = 5\npercent = 90\n\n\
             [[alerts.rule]]\nname = \"spool nearly full\"\nkind = \"spool_full\"\npercent = 80\n\n\
             [[alerts.rule]]\nname = \"archive nearly full\"\nkind = \"archive_full\"\npercent = {archive_percent}\n",
            data.path().display(),
            sink.addr
        ),
    )
    .unwrap();
    };
    write_config(200.0);
    // Creates the schema; nothing holds yet.
    let (o, first) = alerts(&config, &url, "2026-06-01T11:00:00Z");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(first["fired"], serde_json::json!([]));

    pg.psql(
        &db,
        &format!(
            "INSERT INTO exporters (address, name) VALUES ('192.0.2.1', 'r1'), ('192.0.2.2', 'r2');
             INSERT INTO interfaces (exporter_id, ifindex, name, speed_bps) SELECT id, 1, 'Gi0/1', 1000000000 FROM exporters WHERE name = 'r1';
             SELECT flowstage_ensure_day('2026-06-01');
             -- r1: 9 % loss and 20 decode errors a minute before T0.
             INSERT INTO exporter_health (minute, exporter_id, packets, flows, lost, decode_errors)
               SELECT m, (SELECT id FROM exporters WHERE name = 'r1'), 10, 1000, 100, 20
               FROM generate_series('{T0}'::timestamptz - interval '15 minutes', '{T0}'::timestamptz - interval '1 minute', interval '1 minute') m;
             -- r2: silent since 19 minutes before T0.
             INSERT INTO exporter_health (minute, exporter_id, packets, flows)
               SELECT m, (SELECT id FROM exporters WHERE name = 'r2'), 10, 1000
               FROM generate_series('{T0}'::timestamptz - interval '30 minutes', '{T0}'::timestamptz - interval '20 minutes', interval '1 minute') m;
             -- r1 Gi0/1 in: 95 % of 1 Gbit/s every minute.
             INSERT INTO flow_totals (minute, exporter_id, ifindex, direction, sampling_rate, bytes, packets, flows)
               SELECT m, (SELECT id FROM exporters WHERE name = 'r1'), 1, 0, 1, 7125000000, 5000000, 1000
               FROM generate_series('{T0}'::timestamptz - interval '12 minutes', '{T0}'::timestamptz - interval '1 minute', interval '1 minute') m;"
        ),
    );
    let spool = data.path().join("spool");
    let archive = data.path().join("archive/2026/06/01");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(spool.join("000001.batch"), vec![0u8; 900]).unwrap();
    std::fs::write(
        archive.join("flows-202606011155.parquet"),
        vec![0u8; 1_000_000],
    )
    .unwrap();
    write_config((used - 10.0).max(0.0));

    let (o, fired) = alerts(&config, &url, T0);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all = vec![
        "archive nearly full archive".to_string(),
        "decode errors 192.0.2.1".to_string(),
        "exporter silent 192.0.2.2".to_string(),
        "flow loss 192.0.2.1".to_string(),
        "interface busy 192.0.2.1 1 in".to_string(),
        "spool nearly full spool".to_string(),
    ];
    assert_eq!(names(&fired["fired"]), all, "{fired}");
    assert_eq!(names(&fired["active"]), all);
    assert_eq!(fired["mails_sent"], 6);
    let value = |rule: &str| {
        fired["fired"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == rule)
            .unwrap()["value"]
            .as_f64()
            .unwrap()
    };
    assert!((value("flow loss") - 100.0 * 1000.0 / 11000.0).abs() < 1e-9);
    assert_eq!(value("decode errors"), 200.0);
    assert_eq!(value("exporter silent"), 19.0);
    assert!((value("interface busy") - 95.0).abs() < 1e-9);
    assert!((value("spool nearly full") - 90.0).abs() < 1e-9);

    let mails = sink.wait_for(6);
    assert_eq!(mails.len(), 6);
    for m in &mails {
        assert_eq!(m.to, vec!["<noc@example.net>".to_string()]);
        assert!(
            m.subject().starts_with("[flowstage lab] ALERT: "),
            "{}",
            m.subject()
        );
    }
    let loss = mails
        .iter()
        .find(|m| m.subject() == "[flowstage lab] ALERT: flow loss 192.0.2.1")
        .expect("a loss mail");
    assert!(
        loss.body().contains("exporter r1 (192.0.2.1) lost 9.1 % of its flows over 10 minutes (1000 of 11000; limit 5 %)"),
        "{}",
        loss.body()
    );
    let busy = mails
        .iter()
        .find(|m| m.subject() == "[flowstage lab] ALERT: interface busy 192.0.2.1 1 in")
        .expect("an interface mail");
    assert!(
        busy.body().contains("interface Gi0/1 (ifIndex 1) of r1 (192.0.2.1) ran above 90 % of its 1.0 Gbit/s for 5 minutes"),
        "{}",
        busy.body()
    );

    // Still holding a minute later: no new alert, no mail.
    let (_, again) = alerts(&config, &url, "2026-06-01T12:01:00Z");
    assert_eq!(again["fired"], serde_json::json!([]));
    assert_eq!(again["cleared"], serde_json::json!([]));
    assert_eq!(names(&again["active"]), all);
    assert_eq!(again["mails_sent"], 0);
    assert_eq!(sink.mails().len(), 6);

    // Hold-down: conditions that stop holding (the spool emptied, the busy minutes
    // left the window) keep their alerts for clear_after_minutes (default 5), so a
    // flapping condition is one episode.
    std::fs::rename(spool.join("000001.batch"), data.path().join("aside")).unwrap();
    let (_, held) = alerts(&config, &url, "2026-06-01T12:03:00Z");
    assert_eq!(held["cleared"], serde_json::json!([]), "{held}");
    assert_eq!(names(&held["active"]), all);
    std::fs::rename(data.path().join("aside"), spool.join("000001.batch")).unwrap();

    // Visible in status.
    // The archive's own check: the file there is long past, so nothing new arrives.
    let archive_check = support::status_check(&config, &url, "archive");
    assert_eq!(archive_check["level"], "warn", "{archive_check}");
    let detail = archive_check["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("1 file(s), 976.6 KiB of its 1.0 MiB cap (95 %), newest for 2026-06-01 11:55 UTC: nothing archived for"),
        "{detail}"
    );
    let check = support::status_check(&config, &url, "alerts");
    assert_eq!(check["level"], "warn");
    assert!(
        check["detail"].as_str().unwrap().starts_with("6 active: "),
        "{check}"
    );

    // Everything back to normal: each clears once, one mail each.
    pg.psql(
        &db,
        &format!(
            "INSERT INTO exporter_health (minute, exporter_id, packets, flows)
               SELECT m, e.id, 10, 1000 FROM exporters e,
               generate_series('{T0}'::timestamptz, '{T0}'::timestamptz + interval '39 minutes', interval '1 minute') m"
        ),
    );
    std::fs::remove_file(spool.join("000001.batch")).unwrap();
    std::fs::remove_file(archive.join("flows-202606011155.parquet")).unwrap();
    write_config((used + 10.0).min(100.0));
    let (_, cleared) = alerts(&config, &url, "2026-06-01T12:40:00Z");
    assert_eq!(names(&cleared["cleared"]), all, "{cleared}");
    assert_eq!(cleared["active"], serde_json::json!([]));
    let mails = sink.wait_for(12);
    assert_eq!(mails.len(), 12);
    let clears: Vec<String> = mails[6..].iter().map(|m| m.subject()).collect();
    assert!(
        mails[6..].iter().all(|m| m.body().contains("after 40 min")),
        "{clears:?}"
    );
    for a in &all {
        assert_eq!(
            clears
                .iter()
                .filter(|s| **s == format!("[flowstage lab] CLEARED: {a}"))
                .count(),
            1,
            "{a}: {clears:?}"
        );
    }
    let (_, quiet) = alerts(&config, &url, "2026-06-01T12:41:00Z");
    assert_eq!(quiet["mails_sent"], 0);
    assert_eq!(sink.mails().len(), 12);
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM alerts WHERE start_mailed_at IS NOT NULL AND clear_mailed_at IS NOT NULL"),
        "6"
    );

    // The daily summary, mailed the same way.
    let summary = Command::new(support::collector_bin())
        .args([
            "summary",
            "--mail",
            "--database",
            &url,
            "--now",
            "2026-06-01T13:00:00Z",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        summary.status.success(),
        "{}",
        String::from_utf8_lossy(&summary.stderr)
    );
    let mails = sink.wait_for(13);
    let daily = &mails[12];
    assert!(
        daily
            .subject()
            .starts_with("[flowstage lab] daily summary: ")
            && daily.subject().ends_with(", 0 active alert(s)"),
        "{}",
        daily.subject()
    );
    let body = daily.body();
    // 12 minutes of 7.125 GB.
    assert!(body.contains("Traffic: 79.6 GiB in 12000 flows"), "{body}");
    assert!(body.contains("r1:1"), "{body}");
    assert!(body.contains("Alerts in these 24 hours: 6"), "{body}");

    // Retention: old health rows go, each exporter's newest stays (still silent).
    let purge = Command::new(support::collector_bin())
        .args([
            "purge",
            "--database",
            &url,
            "--now",
            "2026-08-01T00:00:00Z",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        purge.status.success(),
        "{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    assert_eq!(
        pg.psql(&db, "SELECT string_agg(to_char(minute AT TIME ZONE 'UTC', 'HH24:MI'), ' ' ORDER BY minute) FROM exporter_health"),
        "12:39 12:39"
    );
}

#[test]
fn exporter_health_per_minute_matches_the_collector_counters() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("alerts_health");
    let dir = support::data_dir("health");
    let c = Collector::start(&url, dir.path(), &[]);
    let opts = flowstage::gen::GenOptions {
        seed: 5,
        flows: 3000,
        rate: Some(50_000),
        exporters: 2,
        first_source: 30,
        ..flowstage::gen::GenOptions::new(flowstage::encode::EncodeProtocol::V5, c.target())
    };
    let e = flowstage::gen::run(&opts, |_| {}).unwrap();
    // Garbage from a third exporter: decode errors only.
    let junk = std::net::UdpSocket::bind("127.0.0.33:0").unwrap();
    for _ in 0..7 {
        junk.send_to(&[0, 9, 0, 1, 2], c.target()).unwrap();
    }
    c.wait_for("all flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == e.total.flows
    });
    let packets = c.metric("flowstage_exporter_packets_total", &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let sums = || {
        pg.psql(
            &db,
            "SELECT coalesce(sum(packets), 0) || ' ' || coalesce(sum(flows), 0) || ' ' || coalesce(sum(decode_errors), 0)
             FROM exporter_health",
        )
    };
    let want = format!("{packets} {} 7", e.total.flows);
    while sums() != want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(sums(), want);
    assert_eq!(
        pg.psql(
            &db,
            "SELECT string_agg(host(e.address) || '=' || h.decode_errors, ' ' ORDER BY e.address)
             FROM (SELECT exporter_id, sum(decode_errors) AS decode_errors FROM exporter_health GROUP BY 1) h
             JOIN exporters e ON e.id = h.exporter_id WHERE h.decode_errors > 0"
        ),
        "127.0.0.33=7"
    );
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn interface_rule_can_read_the_devices_own_counters() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("alerts_device");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flowstage.toml");
    std::fs::write(
        &config,
        "[alerts]\nmail = false\n\n\
         [[alerts.rule]]\nname = \"busy by counters\"\nkind = \"interface_utilisation\"\nmeasure = \"device\"\nminutes = 15\npercent = 90\n",
    )
    .unwrap();
    let (o, _) = alerts(&config, &url, "2026-06-01T11:00:00Z");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pg.psql(
        &db,
        &format!(
            "INSERT INTO exporters (address, name) VALUES ('192.0.2.1', 'r1');
             INSERT INTO interfaces (exporter_id, ifindex, name, speed_bps)
               SELECT id, i, 'Gi0/' || i, 1000000000 FROM exporters, generate_series(1, 2) i;
             -- ifIndex 1: 95 % in, by SNMP, every 5 minutes of the window; by sFlow 50 %.
             INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets)
               SELECT '{T0}'::timestamptz - make_interval(mins => m), e.id, 1, 'snmp', 300, 35625000000, 1000
               FROM exporters e, generate_series(0, 10, 5) m;
             INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets)
               SELECT '{T0}'::timestamptz - make_interval(mins => m), e.id, 1, 'sflow', 60, 3750000000, 0
               FROM exporters e, generate_series(0, 14) m;
             -- ifIndex 2: as busy, but counters for only a third of the window.
             INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets)
               SELECT '{T0}', id, 2, 'snmp', 300, 35625000000, 0 FROM exporters;"
        ),
    );
    let (o, fired) = alerts(&config, &url, T0);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(names(&fired["fired"]), ["busy by counters 192.0.2.1 1 in"]);
    let a = &fired["fired"][0];
    assert!((a["value"].as_f64().unwrap() - 95.0).abs() < 1e-9, "{a}");
    assert_eq!(
        a["message"],
        "interface Gi0/1 (ifIndex 1) of r1 (192.0.2.1) averaged 95.0 % of its 1.0 Gbit/s over 15 minutes (in, measured by snmp; limit 90 %)"
    );
    // alerts.mail = false: nothing is owed, so turning mail on later sends no backlog.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM alerts WHERE start_mailed_at IS NULL"
        ),
        "0"
    );
    // Half an hour later no counters cover the window: cleared.
    let (_, later) = alerts(&config, &url, "2026-06-01T12:30:00Z");
    assert_eq!(
        names(&later["cleared"]),
        ["busy by counters 192.0.2.1 1 in"]
    );

    // measure is for interface rules only, and only flows or device.
    for (rule, bad) in [("loss", "device"), ("interface_utilisation", "snmp")] {
        std::fs::write(
            &config,
            format!("[[alerts.rule]]\nname = \"x\"\nkind = \"{rule}\"\nmeasure = \"{bad}\"\n"),
        )
        .unwrap();
        let (o, _) = alerts(&config, &url, T0);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("alerts.rule[0].measure") && err.contains(bad),
            "{err}"
        );
    }
}
