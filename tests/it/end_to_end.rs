//! End to end, per protocol: the generator sends known traffic to a real collector
//! process over loopback UDP, the collector writes to a throwaway PostgreSQL, and
//! `flowstage-collector report` must show exactly the generator's totals.
#![allow(clippy::unwrap_used)]

use crate::support;

use flowstage::encode::EncodeProtocol;
use flowstage::gen::{self, Expected, GenOptions};
use support::{expected_rows, report, report_rows, totals, Collector, Pg};

fn send(
    c: &Collector,
    protocol: EncodeProtocol,
    ipv6: bool,
    seed: u64,
    flows: u64,
    exporters: u8,
) -> Expected {
    let opts = GenOptions {
        ipv6,
        seed,
        flows,
        rate: Some(100_000),
        exporters,
        first_source: 20,
        ..GenOptions::new(protocol, c.target())
    };
    gen::run(&opts, |_| {}).unwrap()
}

fn check_reports(url: &str, e: &Expected) {
    let expect = (e.total.bytes, e.total.packets, e.total.flows);
    assert!(e.total.flows > 0);
    for direction in ["in", "out"] {
        let v = report(url, "total", &["--direction", direction]);
        assert_eq!(totals(&v), expect, "total, direction {direction}");
    }
    for by in [
        "exporter",
        "dst-port",
        "proto",
        "src-as",
        "dst-as",
        "interface",
    ] {
        let v = report(url, by, &[]);
        assert_eq!(totals(&v), expect, "total of the --by {by} report");
        assert_eq!(report_rows(&v), expected_rows(e, by), "rows of --by {by}");
    }
    // --interface narrows to one ifIndex on every exporter.
    for ifindex in 1..=4 {
        let want = expected_rows(e, "interface")
            .iter()
            .filter(|(k, _)| k.ends_with(&format!(":{ifindex}")))
            .fold((0, 0, 0), |a, (_, r)| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
        let v = report(url, "total", &["--interface", &ifindex.to_string()]);
        assert_eq!(totals(&v), want, "--interface {ifindex}");
    }
    // CSV and text carry the same numbers as JSON.
    let csv = support::report_raw(url, &["--by", "proto", "--format", "csv", "--top", "1000"]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("key,bytes,packets,flows"));
    let from_csv: std::collections::BTreeMap<String, (u64, u64, u64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].to_string(),
                (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(from_csv, expected_rows(e, "proto"), "CSV rows");
    let text = support::report_raw(url, &["--by", "total", "--format", "text"]);
    let total_line = text.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    let numbers: Vec<u64> = total_line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        numbers,
        [expect.0, expect.1, expect.2],
        "text TOTAL line:\n{text}"
    );
    // High-cardinality keys: top N per bucket plus "other" still add up exactly.
    for by in ["src-ip", "dst-ip", "src-port"] {
        let v = report(url, by, &["--top", "10"]);
        let rows = report_rows(&v);
        assert_eq!(rows.len(), 11, "--by {by} --top 10 gives 10 rows and other");
        let sum = rows
            .values()
            .fold((0, 0, 0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
        assert_eq!(sum, expect, "rows of --by {by} add up to the total");
    }
}

fn end_to_end(name: &str, protocol: EncodeProtocol, ipv6: bool) {
    let pg = Pg::shared();
    let (_, url) = pg.create_database(name);
    let dir = support::data_dir(name);
    let c = Collector::start(&url, dir.path(), &[]);
    let e = send(&c, protocol, ipv6, 7, 30_000, 3);
    c.wait_for("all flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == e.total.flows
    });
    assert_eq!(c.metric("flowstage_exporter_lost_flows_total", &[]), 0);
    assert_eq!(c.metric("flowstage_exporter_decode_errors_total", &[]), 0);
    let (status, log) = c.terminate();
    assert!(status.success(), "collector exit: {status}\n{log}");
    check_reports(&url, &e);
    // Exporters and interfaces registered themselves, with timestamps.
    let db = url
        .split('?')
        .next()
        .unwrap()
        .trim_start_matches("postgresql:///");
    assert_eq!(
        pg.psql(
            db,
            "SELECT count(*) FROM exporters WHERE first_seen <= last_seen AND last_seen > now() - interval '10 minutes'"
        ),
        "3"
    );
    assert_eq!(pg.psql(db, "SELECT count(*) FROM interfaces"), "12");
}

#[test]
fn netflow_v5() {
    end_to_end("e2e_v5", EncodeProtocol::V5, false);
}

#[test]
fn netflow_v9() {
    end_to_end("e2e_v9", EncodeProtocol::V9, false);
}

#[test]
fn ipfix() {
    end_to_end("e2e_ipfix", EncodeProtocol::Ipfix, false);
}

#[test]
fn netflow_v9_ipv6() {
    end_to_end("e2e_v9_ipv6", EncodeProtocol::V9, true);
}

#[test]
fn ipfix_ipv6() {
    end_to_end("e2e_ipfix_ipv6", EncodeProtocol::Ipfix, true);
}

/// v5 header sampling (mode 1, interval 100): stored bytes and packets are scaled, the
/// rate is kept with the data; a configured override replaces the announced rate.
#[test]
fn sampled_v5_is_scaled() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("e2e_sampled");
    let dir = support::data_dir("sampled");
    let c = Collector::start(&url, dir.path(), &[]);
    let opts = GenOptions {
        seed: 3,
        flows: 3_000,
        rate: Some(100_000),
        first_source: 30,
        sampling: 0x4000 | 100,
        ..GenOptions::new(EncodeProtocol::V5, c.target())
    };
    let e = gen::run(&opts, |_| {}).unwrap();
    c.wait_for("all flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == e.total.flows
    });
    let (status, _) = c.terminate();
    assert!(status.success());
    let v = report(&url, "total", &[]);
    assert_eq!(totals(&v), (e.total.bytes, e.total.packets, e.total.flows));
    assert_eq!(e.total.bytes % 100, 0, "expected bytes are scaled by 100");
    assert_eq!(
        pg.psql(&db, "SELECT DISTINCT sampling_rate FROM flow_totals"),
        "100"
    );
}

/// The exporter allow-list: packets from others are counted and dropped.
#[test]
fn allow_list_drops_and_counts_others() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("e2e_allow");
    let dir = support::data_dir("allow");
    let config = dir.path().join("flowstage.toml");
    std::fs::write(
        &config,
        "[collector]\nallowed_exporters = [\"127.0.0.40/32\"]\n\n[[exporter]]\naddress = \"127.0.0.40\"\nname = \"rtr-allowed\"\n",
    )
    .unwrap();
    let c = Collector::start(&url, dir.path(), &["--config", config.to_str().unwrap()]);
    let mut opts = GenOptions {
        seed: 5,
        flows: 2_000,
        rate: Some(100_000),
        first_source: 40,
        ..GenOptions::new(EncodeProtocol::V9, c.target())
    };
    let allowed = gen::run(&opts, |_| {}).unwrap();
    opts.first_source = 41;
    opts.seed = 6;
    let refused = gen::run(&opts, |_| {}).unwrap();
    c.wait_for("refused datagrams counted", |c| {
        c.metric("flowstage_exporter_not_allowed_total", &["127.0.0.41"]) == refused.datagrams
    });
    let (status, _) = c.terminate();
    assert!(status.success());
    let v = report(&url, "exporter", &[]);
    let rows = report_rows(&v);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let t = allowed.total;
    assert_eq!(
        rows.get("rtr-allowed"),
        Some(&(t.bytes, t.packets, t.flows)),
        "named exporter"
    );
    let v = report(&url, "total", &["--exporter", "127.0.0.40"]);
    assert_eq!(
        totals(&v),
        (t.bytes, t.packets, t.flows),
        "filter by address"
    );
}

/// SIGHUP re-reads exporter names and sampling overrides; nothing buffered is lost.
#[test]
fn sighup_reloads_exporter_settings() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("e2e_sighup");
    let dir = support::data_dir("sighup");
    let config = dir.path().join("flowstage.toml");
    std::fs::write(
        &config,
        "[[exporter]]\naddress = \"127.0.0.50\"\nname = \"rtr-old\"\n",
    )
    .unwrap();
    let c = Collector::start(&url, dir.path(), &["--config", config.to_str().unwrap()]);
    let mut opts = GenOptions {
        seed: 8,
        flows: 2_000,
        rate: Some(100_000),
        first_source: 50,
        ..GenOptions::new(EncodeProtocol::Ipfix, c.target())
    };
    let before = gen::run(&opts, |_| {}).unwrap();
    c.wait_for("first part decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == before.total.flows
    });
    std::fs::write(
        &config,
        "[[exporter]]\naddress = \"127.0.0.50\"\nname = \"rtr-new\"\nsampling_rate = 10\n",
    )
    .unwrap();
    c.signal(nix::sys::signal::Signal::SIGHUP);
    c.wait_for("the reload", |c| {
        c.log_text().contains("exporter settings reloaded")
    });
    opts.seed = 9;
    let after = gen::run(&opts, |_| {}).unwrap();
    c.wait_for("second part decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == before.total.flows + after.total.flows
    });
    let (status, _) = c.terminate();
    assert!(status.success());
    let rows = report_rows(&report(&url, "exporter", &[]));
    let b = before.total.bytes + 10 * after.total.bytes;
    let p = before.total.packets + 10 * after.total.packets;
    let f = before.total.flows + after.total.flows;
    assert_eq!(
        rows.into_iter().collect::<Vec<_>>(),
        vec![("rtr-new".to_string(), (b, p, f))]
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT string_agg(DISTINCT sampling_rate::text, ',') FROM flow_totals"
        ),
        "1,10"
    );
    // The rename stamped updated_at; writing batches alone does not.
    assert_eq!(
        pg.psql(&db, "SELECT updated_at > first_seen FROM exporters"),
        "t"
    );
}

/// One port takes v5, v9 and IPFIX (the version is read per datagram), over IPv4 and
/// IPv6 listeners at once.
#[test]
fn one_port_takes_every_version_over_ipv4_and_ipv6() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: this host has no IPv6 loopback (::1)");
        return;
    }
    let pg = Pg::shared();
    let (_, url) = pg.create_database("e2e_mixed");
    let dir = support::data_dir("mixed");
    let v6_port = support::free_udp_port();
    let v6_target: std::net::SocketAddr = format!("[::1]:{v6_port}").parse().unwrap();
    let c = Collector::start(&url, dir.path(), &["--listen", &v6_target.to_string()]);
    let mut expected = Vec::new();
    for (seed, protocol) in [
        (41, EncodeProtocol::V5),
        (42, EncodeProtocol::V9),
        (43, EncodeProtocol::Ipfix),
    ] {
        let over_v6 = GenOptions {
            seed,
            flows: 1_000,
            ..GenOptions::new(protocol, v6_target)
        };
        expected.push(gen::run(&over_v6, |_| {}).unwrap());
        let over_v4 = GenOptions {
            seed,
            flows: 1_000,
            first_source: 60,
            ..GenOptions::new(protocol, c.target())
        };
        expected.push(gen::run(&over_v4, |_| {}).unwrap());
    }
    let flows: u64 = expected.iter().map(|e| e.total.flows).sum();
    c.wait_for("all versions decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == flows
    });
    for protocol in ["v5", "v9", "ipfix"] {
        assert_eq!(
            c.metric(
                "flowstage_exporter_flows_total",
                &["exporter=\"::1\"", &format!("protocol=\"{protocol}\"")]
            ),
            1_000,
            "{protocol} over IPv6"
        );
    }
    let (status, _) = c.terminate();
    assert!(status.success());
    let rows = report_rows(&report(&url, "exporter", &[]));
    let sum = |from: &[Expected]| {
        from.iter().fold((0, 0, 0), |a, e| {
            (
                a.0 + e.total.bytes,
                a.1 + e.total.packets,
                a.2 + e.total.flows,
            )
        })
    };
    let v6: Vec<Expected> = expected.iter().step_by(2).cloned().collect();
    let v4: Vec<Expected> = expected.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(rows.get("::1"), Some(&sum(&v6)));
    assert_eq!(rows.get("127.0.0.60"), Some(&sum(&v4)));
}

#[test]
fn top_n_by_total_by_busiest_step_and_by_95th_percentile() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("rank");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut client = flowstage::db::connect(&url).await.unwrap();
            flowstage::db::migrate(&mut client).await.unwrap();
        });
    // Port 443: steady, 2000 bytes every 5 minutes for 5 hours (120 000 in all).
    // Port 80: one burst of 100 000 bytes. By total and by 95th percentile 443 leads;
    // by the busiest step 80 does.
    pg.psql(
        &db,
        "SELECT flowstage_ensure_day(current_date - 1), flowstage_ensure_day(current_date);
         INSERT INTO exporters (address) VALUES ('192.0.2.1');
         INSERT INTO flow_port (minute, exporter_id, ifindex, direction, side, port, bytes, packets, flows)
           SELECT date_trunc('minute', now()) - interval '5 hours' + i * interval '5 minutes', e.id, 1, 0, 1, 443, 2000, 2, 1
           FROM exporters e, generate_series(0, 59) i;
         INSERT INTO flow_port (minute, exporter_id, ifindex, direction, side, port, bytes, packets, flows)
           SELECT date_trunc('minute', now()) - interval '2 hours', id, 1, 0, 1, 80, 100000, 70, 1 FROM exporters;",
    );
    let first = |rank: &str| {
        let v = report(&url, "dst-port", &["--top", "1", "--rank", rank]);
        let rows = v["rows"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 2, "{v}");
        assert_eq!(rows[1]["key"], "other");
        // Whatever the ranking, the rows still add up to every byte.
        let sum: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
        assert_eq!(sum, 220_000);
        rows[0]["key"].as_str().unwrap().to_string()
    };
    assert_eq!(first("total"), "443");
    assert_eq!(first("max"), "80");
    assert_eq!(first("p95"), "443");
}
