//! The collector under trouble: malformed datagrams between valid traffic, SIGTERM in
//! the middle of a stream, and PostgreSQL going away for 30 seconds. Totals must stay
//! exact: nothing lost, nothing counted twice, every problem counted.
#![allow(clippy::unwrap_used)]

use crate::support;

use std::net::UdpSocket;
use std::time::Duration;

use flowstage::encode::EncodeProtocol;
use flowstage::gen::{self, Expected, GenOptions, Totals};
use support::{report, totals, Collector, Pg};

fn opts(c: &Collector, protocol: EncodeProtocol, seed: u64, flows: u64, source: u8) -> GenOptions {
    GenOptions {
        seed,
        flows,
        rate: Some(50_000),
        first_source: source,
        spread_secs: 20,
        ..GenOptions::new(protocol, c.target())
    }
}

fn sum(parts: &[&Totals]) -> (u64, u64, u64) {
    parts.iter().fold((0, 0, 0), |a, t| {
        (a.0 + t.bytes, a.1 + t.packets, a.2 + t.flows)
    })
}

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

/// A v9 header (20 bytes) followed by `body`.
fn v9(source_id: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&be16(9));
    b.extend_from_slice(&be16(1));
    b.extend_from_slice(&1000u32.to_be_bytes());
    b.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&source_id.to_be_bytes());
    b.extend_from_slice(body);
    b
}

/// An IPFIX message (16-byte header with the right length) around `body`.
fn ipfix(domain: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&be16(10));
    b.extend_from_slice(&be16((16 + body.len()) as u16));
    b.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&domain.to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&be16(id));
    b.extend_from_slice(&be16((4 + body.len()) as u16));
    b.extend_from_slice(body);
    b
}

/// The malformed corpus: (expected error kind, protocol label, datagram).
fn corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut v5_count = vec![0u8; 24];
    v5_count[1] = 5;
    v5_count[3] = 30; // 30 records announced, none present
    let template_zero_fields = v9(77, &set(0, &[0x01, 0x00, 0, 0]));
    let field_length_zero = v9(77, &set(0, &[0x01, 0x00, 0, 1, 0, 8, 0, 0]));
    let mut set_short = v9(77, &[]);
    set_short.extend_from_slice(&[0x01, 0x00, 0x00, 0x02, 0, 0, 0, 0]);
    let mut set_past_end = v9(77, &[]);
    set_past_end.extend_from_slice(&[0x01, 0x00, 0x04, 0x00, 0, 0, 0, 0]);
    let mut oversized = vec![0x01, 0x00, 0xff, 0xff];
    oversized.extend(std::iter::repeat_n(0u8, 64));
    let oversized_fields = v9(77, &set(0, &oversized));
    // IPFIX template 300: one variable-length field; data claims 200 bytes, has 3.
    let mut varlen = set(2, &[0x01, 0x2c, 0, 1, 0, 82, 0xff, 0xff]);
    varlen.extend(set(300, &[200, b'a', b'b', b'c']));
    let varlen_overrun = ipfix(88, &varlen);
    // IPFIX template 301 defined, withdrawn, then data for it.
    let mut withdrawn = set(2, &[0x01, 0x2d, 0, 1, 0, 8, 0, 4]);
    withdrawn.extend(set(2, &[0x01, 0x2d, 0, 0]));
    withdrawn.extend(set(301, &[10, 0, 0, 1]));
    let withdrawn_data = ipfix(89, &withdrawn);
    vec![
        ("truncated_header", "v9", vec![0, 9, 0, 1, 0]),
        ("truncated_header", "v5", vec![0, 5, 0, 1, 0, 0, 0, 0]),
        ("record_count", "v5", v5_count),
        ("empty_template", "v9", template_zero_fields),
        ("zero_length_field", "v9", field_length_zero),
        ("set_length", "v9", set_short),
        ("set_length", "v9", set_past_end),
        ("unknown_version", "unknown", vec![0, 7, 0, 0, 0, 0, 0, 0]),
        ("too_many_fields", "v9", oversized_fields),
        ("varlen_overrun", "ipfix", varlen_overrun),
        ("withdrawn_template", "ipfix", withdrawn_data),
    ]
}

#[test]
fn malformed_datagrams_are_counted_and_valid_traffic_is_exact() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("malformed");
    let dir = support::data_dir("malformed");
    let c = Collector::start(&url, dir.path(), &[]);
    let before = gen::run(&opts(&c, EncodeProtocol::V9, 11, 5_000, 60), |_| {}).unwrap();
    // The bad datagrams come from the same address as the valid traffic.
    let bad = UdpSocket::bind("127.0.0.60:0").unwrap();
    let corpus = corpus();
    for (_, _, datagram) in &corpus {
        bad.send_to(datagram, c.target()).unwrap();
    }
    let after = gen::run(&opts(&c, EncodeProtocol::V9, 12, 5_000, 60), |_| {}).unwrap();
    let flows = before.total.flows + after.total.flows;
    c.wait_for("valid flows decoded and errors counted", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == flows
            && c.metric("flowstage_exporter_decode_errors_total", &[]) == corpus.len() as u64
    });
    let metrics = c.metrics();
    support::assert_errors_by_kind(
        &metrics,
        "127.0.0.60",
        corpus.iter().map(|(k, p, _)| (*k, *p)),
    );
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");
    let v = report(&url, "total", &[]);
    assert_eq!(totals(&v), sum(&[&before.total, &after.total]));
}

fn stat_value(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("STAT "))
        .expect("final STAT line");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

#[test]
fn sigterm_flushes_and_restart_never_double_counts() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("sigterm");
    let dir = support::data_dir("sigterm");
    let port = support::free_udp_port();

    // A: sent completely; its buckets are still open when SIGTERM arrives.
    let c = Collector::start_on(port, &url, dir.path(), &[]);
    let a = gen::run(&opts(&c, EncodeProtocol::Ipfix, 21, 20_000, 70), |_| {}).unwrap();
    c.wait_for("burst A decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == a.total.flows
    });
    // B: SIGTERM arrives while it is being sent.
    let b_opts = GenOptions {
        rate: Some(20_000),
        ..opts(&c, EncodeProtocol::Ipfix, 22, 40_000, 71)
    };
    let sender = std::thread::spawn(move || gen::run(&b_opts, |_| {}));
    std::thread::sleep(Duration::from_millis(700));
    let (status, log) = c.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status}\n{log}");
    let received = (stat_value(&log, "bytes"), stat_value(&log, "flows"));
    // Everything that reached the socket was decoded: the final STAT line is the truth
    // the database is compared with below.
    assert_eq!(stat_value(&log, "queue_drops"), 0, "{log}");
    assert_eq!(stat_value(&log, "socket_drops"), 0, "{log}");
    assert!(
        received.1 > a.total.flows,
        "part of B arrived before SIGTERM"
    );
    let b = sender.join().unwrap().unwrap();
    assert!(
        received.1 < a.total.flows + b.total.flows,
        "SIGTERM came mid-stream"
    );

    // After a restart, C is counted once and A and B's part are not counted again.
    let c = Collector::start_on(port, &url, dir.path(), &[]);
    let more = gen::run(&opts(&c, EncodeProtocol::Ipfix, 23, 10_000, 72), |_| {}).unwrap();
    c.wait_for("burst C decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == more.total.flows
    });
    let (status, _) = c.terminate();
    assert!(status.success());
    let v = report(&url, "total", &[]);
    let (bytes, _, flows) = totals(&v);
    assert_eq!(
        (bytes, flows),
        (received.0 + more.total.bytes, received.1 + more.total.flows)
    );
}

#[test]
fn database_outage_of_30s_loses_nothing() {
    let pg = Pg::start();
    let (_, url) = pg.create_database("outage");
    let dir = support::data_dir("outage");
    // Flows that ended minutes ago sit in closed minutes, so with no grace every
    // second's worth is a finished batch: batches keep coming during the outage.
    let c = Collector::start(&url, dir.path(), &["--flush-grace", "0"]);
    let stream = |seed: u64, flows: u64| GenOptions {
        rate: Some(2_000),
        spread_secs: 60,
        age_secs: 120,
        ..opts(&c, EncodeProtocol::V5, seed, flows, 80)
    };
    let first = gen::run(&stream(31, 6_000), |_| {}).unwrap();
    c.wait_for("first part written", |c| {
        c.metric("flowstage_batches_written_total", &[]) > 0
    });
    pg.stop();
    let during_opts = stream(32, 60_000);
    let during = std::thread::spawn(move || gen::run(&during_opts, |_| {}));
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        c.metric("flowstage_batches_spooled_total", &[]) > 0,
        "batches spooled while down"
    );
    assert_eq!(c.metric("flowstage_database_up", &[]), 0);
    pg.restart();
    let during: Expected = during.join().unwrap().unwrap();
    let last = gen::run(&stream(33, 4_000), |_| {}).unwrap();
    let flows = first.total.flows + during.total.flows + last.total.flows;
    c.wait_for("all decoded and the spool replayed", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == flows
            && c.metric("flowstage_spool_bytes", &[]) == 0
            && c.metric("flowstage_batches_replayed_total", &[]) > 0
    });
    assert_eq!(c.metric("flowstage_batches_dropped_total", &[]), 0);
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");
    let v = report(&url, "total", &[]);
    assert_eq!(totals(&v), sum(&[&first.total, &during.total, &last.total]));
}
