//! The raw flow archive: generated traffic through a real collector comes back from
//! `query` and from DuckDB with the generator's totals; the filter language matches
//! what a direct evaluation of the listed flows says; files rotate by window, nest by
//! date and respect the size and age caps; a collector killed mid-file leaves a file
//! that is sealed at its last complete block and read by DuckDB.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowstage::archive::{self, ArchiveWriter, ArchivedFlow};
use flowstage::decode::FlowRecord;
use flowstage::encode::EncodeProtocol;
use flowstage::gen::{self, GenOptions};

use crate::support::{self, collector_bin, Collector, Pg};

/// A Python with DuckDB: `FLOWSTAGE_PYTHON`, or `python3` if it has the module. CI
/// installs one (scripts/test.sh) and sets FLOWSTAGE_REQUIRE_DUCKDB=1.
fn duckdb_python() -> Option<String> {
    let candidates = [
        std::env::var("FLOWSTAGE_PYTHON").ok(),
        Some("python3".into()),
    ];
    for python in candidates.into_iter().flatten() {
        let ok = Command::new(&python)
            .args(["-c", "import duckdb"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    assert!(
        std::env::var("FLOWSTAGE_REQUIRE_DUCKDB").is_err(),
        "FLOWSTAGE_REQUIRE_DUCKDB is set but no Python with duckdb was found"
    );
    eprintln!("skipping the DuckDB read-back: no Python with duckdb (set FLOWSTAGE_PYTHON)");
    None
}

/// (rows, bytes, packets, flows) of every finished file under `root`, read by DuckDB.
fn duckdb_totals(python: &str, files: &[PathBuf]) -> (u64, u64, u64, u64) {
    let list: Vec<String> = files.iter().map(|p| format!("'{}'", p.display())).collect();
    let script = format!(
        "import duckdb\nr = duckdb.sql(\"SELECT count(*), sum(bytes), sum(packets), sum(flows) FROM read_parquet([{}])\").fetchall()[0]\nprint(' '.join(str(int(x or 0)) for x in r))",
        list.join(", ")
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1], v[2], v[3])
}

fn query(data_dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(collector_bin())
        .args(["query", "--config"])
        .arg(support::empty_config())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--from", "-1d", "--to", "+1h", "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "query {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn finished_files(data_dir: &Path) -> Vec<PathBuf> {
    archive::list(&archive::root(data_dir))
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect()
}

#[test]
fn generated_traffic_comes_back_exactly_from_query_and_duckdb() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("archive_totals");
    let dir = support::data_dir("archive-totals");
    let c = Collector::start(&url, dir.path(), &[]);
    let opts = GenOptions {
        seed: 21,
        flows: 60_000,
        rate: Some(100_000),
        exporters: 3,
        first_source: 20,
        ..GenOptions::new(EncodeProtocol::Ipfix, c.target())
    };
    let e = gen::run(&opts, |_| {}).unwrap();
    c.wait_for("all flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == e.total.flows
    });
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");
    let files = finished_files(dir.path());
    assert!(!files.is_empty(), "no archive file: {log}");
    // Nested by date: archive/YYYY/MM/DD/flows-YYYYMMDDHHMM.parquet.
    let relative = files[0].strip_prefix(archive::root(dir.path())).unwrap();
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(parts.len(), 4, "{relative:?}");
    assert!(parts[3].starts_with(&format!("flows-{}{}{}", parts[0], parts[1], parts[2])));
    let expect = (e.total.bytes, e.total.packets, e.total.flows);
    let v = query(dir.path(), &["--by", "total"]);
    assert_eq!(support::totals(&v), expect);
    for by in ["dst-port", "proto", "src-as", "dst-as", "exporter"] {
        let v = query(dir.path(), &["--by", by, "--top", "100000"]);
        assert_eq!(support::totals(&v), expect, "{by}");
        assert_eq!(
            support::report_rows(&v),
            support::expected_rows(&e, by),
            "rows of {by}"
        );
    }
    // Addresses (the generator does not count them): every source's sums as the
    // listed flows add up, and a top 5: the five largest, the rest in "other".
    let listed = query(dir.path(), &["--limit", "1000000"]);
    let mut per_source: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
    for f in listed["flows"].as_array().unwrap() {
        let t = per_source
            .entry(f["src_addr"].as_str().unwrap().to_string())
            .or_default();
        t.0 += f["bytes"].as_u64().unwrap();
        t.1 += f["packets"].as_u64().unwrap();
        t.2 += f["flows"].as_u64().unwrap();
    }
    let v = query(dir.path(), &["--by", "src-ip", "--top", "1000000"]);
    assert_eq!(support::report_rows(&v), per_source);
    let mut want: Vec<(String, (u64, u64, u64))> = per_source.into_iter().collect();
    want.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    let v = query(dir.path(), &["--by", "src-ip", "--top", "5"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for (row, (key, t)) in rows.iter().take(5).zip(&want) {
        assert_eq!(row["key"].as_str().unwrap(), key);
        assert_eq!(row["bytes"].as_u64().unwrap(), t.0);
    }
    let other: u64 = want[5..].iter().map(|(_, t)| t.0).sum();
    assert_eq!(rows[5]["key"], "other");
    assert_eq!(rows[5]["bytes"].as_u64().unwrap(), other);
    // Size: the target is at most 20 bytes per flow (nfdump with LZ4: about 30).
    let size: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let per_flow = size as f64 / e.total.flows as f64;
    eprintln!(
        "archive: {size} bytes for {} flows, {per_flow:.1} bytes per flow",
        e.total.flows
    );
    assert!(per_flow <= 20.0, "{per_flow:.1} bytes per flow");
    if let Some(python) = duckdb_python() {
        assert_eq!(
            duckdb_totals(&python, &files),
            (e.total.flows, e.total.bytes, e.total.packets, e.total.flows),
            "DuckDB reads the same flows"
        );
    }
}

type Predicate = Box<dyn Fn(&Listed) -> bool>;

/// A flow list row as the filter sees it.
struct Listed {
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    src_port: u64,
    dst_port: u64,
    proto: u64,
    input_if: u64,
    output_if: u64,
    src_as: u64,
    dst_as: u64,
    bytes: u64,
}

#[test]
fn filters_match_what_the_flows_say() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("archive_filters");
    let dir = support::data_dir("archive-filters");
    let c = Collector::start(&url, dir.path(), &[]);
    let opts = GenOptions {
        seed: 5,
        flows: 20_000,
        rate: Some(100_000),
        exporters: 2,
        first_source: 20,
        ..GenOptions::new(EncodeProtocol::V9, c.target())
    };
    let e = gen::run(&opts, |_| {}).unwrap();
    c.wait_for("all flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == e.total.flows
    });
    c.terminate();
    let all = query(dir.path(), &["--limit", "1000000"]);
    assert_eq!(all["matched"].as_u64().unwrap(), e.total.flows);
    let flows: Vec<Listed> = all["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Listed {
            src: f["src_addr"].as_str().unwrap().parse().unwrap(),
            dst: f["dst_addr"].as_str().unwrap().parse().unwrap(),
            src_port: f["src_port"].as_u64().unwrap(),
            dst_port: f["dst_port"].as_u64().unwrap(),
            proto: f["proto"].as_u64().unwrap(),
            input_if: f["input_if"].as_u64().unwrap(),
            output_if: f["output_if"].as_u64().unwrap(),
            src_as: f["src_as"].as_u64().unwrap(),
            dst_as: f["dst_as"].as_u64().unwrap(),
            bytes: f["bytes"].as_u64().unwrap(),
        })
        .collect();
    assert_eq!(flows.len() as u64, e.total.flows);
    // A busy source and destination to filter on.
    let some_src = flows[0].src;
    let some_dst = flows[1].dst;
    let in_net = |a: &std::net::IpAddr, net: &str| net.parse::<ipnet::IpNet>().unwrap().contains(a);
    let table: Vec<(String, Predicate)> = vec![
        ("proto udp".into(), Box::new(|f| f.proto == 17)),
        (
            "proto tcp and dst port 443".into(),
            Box::new(|f| f.proto == 6 && f.dst_port == 443),
        ),
        (
            "port 53".into(),
            Box::new(|f| f.src_port == 53 || f.dst_port == 53),
        ),
        ("not proto tcp".into(), Box::new(|f| f.proto != 6)),
        (
            "dst port < 1024 or src port < 1024".into(),
            Box::new(|f| f.dst_port < 1024 || f.src_port < 1024),
        ),
        (
            format!("src ip {some_src}"),
            Box::new(move |f| f.src == some_src),
        ),
        (
            format!("ip {some_dst}"),
            Box::new(move |f| f.src == some_dst || f.dst == some_dst),
        ),
        (
            "net 10.0.0.0/8".into(),
            Box::new(move |f| in_net(&f.src, "10.0.0.0/8") || in_net(&f.dst, "10.0.0.0/8")),
        ),
        (
            "dst net 192.168.0.0/16 and not src net 10.1.0.0/16".into(),
            Box::new(move |f| in_net(&f.dst, "192.168.0.0/16") && !in_net(&f.src, "10.1.0.0/16")),
        ),
        ("in if 3".into(), Box::new(|f| f.input_if == 3)),
        (
            "out if 2 or if 4".into(),
            Box::new(|f| f.output_if == 2 || f.input_if == 4 || f.output_if == 4),
        ),
        (
            format!("src as {}", flows[2].src_as),
            Box::new({
                let asn = flows[2].src_as;
                move |f| f.src_as == asn
            }),
        ),
        (
            format!("as {}", flows[3].dst_as),
            Box::new({
                let asn = flows[3].dst_as;
                move |f| f.src_as == asn || f.dst_as == asn
            }),
        ),
        (
            "bytes > 100000 and (proto udp or proto icmp)".into(),
            Box::new(|f| f.bytes > 100_000 && (f.proto == 17 || f.proto == 1)),
        ),
        ("exporter 127.0.0.20".into(), Box::new(|_| true)),
    ];
    for (text, predicate) in &table {
        let want = flows.iter().filter(|f| predicate(f)).count() as u64;
        let args: Vec<&str> = text.split(' ').collect();
        let mut all_args = vec!["--limit", "0"];
        all_args.extend(args);
        let got = query(dir.path(), &all_args)["matched"].as_u64().unwrap();
        if text.starts_with("exporter") {
            assert!(got > 0 && got < e.total.flows, "{text}: {got}");
        } else {
            assert_eq!(got, want, "{text}");
        }
    }
    // Bad filters exit 2... with the position of the bad token under a caret.
    let out = Command::new(collector_bin())
        .args(["query", "--config"])
        .arg(support::empty_config())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["src", "ip", "10.0.0.300"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("filter position 7: \"10.0.0.300\" is not an IP address"),
        "{err}"
    );
    assert!(err.contains("  src ip 10.0.0.300\n         ^"), "{err}");
}

fn flow(end_ms: i64, bytes: u64) -> ArchivedFlow {
    ArchivedFlow {
        exporter: "192.0.2.1".parse().unwrap(),
        record: FlowRecord {
            src_addr: "10.0.0.1".parse().unwrap(),
            dst_addr: "10.0.0.2".parse().unwrap(),
            proto: 6,
            dst_port: 443,
            bytes,
            packets: 1,
            flows: 1,
            sampling_rate: 1,
            start_ms: end_ms - 1000,
            end_ms,
            ..FlowRecord::default()
        },
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn files_rotate_nest_by_date_and_keep_to_their_caps() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let now = Arc::new(AtomicI64::new(at("2026-12-31T23:58:00Z").timestamp()));
    let clock_now = now.clone();
    let writer = ArchiveWriter {
        root: root.clone(),
        window_secs: 300,
        block_rows: 1000,
        block_secs: 3600,
        max_bytes: 1 << 30,
        max_age_days: 7,
        clock: Arc::new(move || {
            DateTime::from_timestamp(clock_now.load(Ordering::SeqCst), 0).unwrap()
        }),
    };
    let (sender, handle) = writer.clone().spawn().unwrap();
    let t0 = at("2026-12-31T23:58:00Z").timestamp_millis();
    for (from, to) in [(0, 1000), (1000, 2000), (2000, 2500)] {
        sender.send((from..to).map(|i| flow(t0 + i, 100)).collect());
    }
    // Two full blocks are written into the open file; nothing is finished yet.
    wait_until("two blocks", || {
        std::fs::read_dir(root.join("2026/12/31"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".footer"))
            })
            .unwrap_or(false)
    });
    assert!(
        archive::list(&root).unwrap().is_empty(),
        "an open file is not listed"
    );
    // The window ends (and the year): the file is finished, the next one is in 2027.
    now.store(at("2027-01-01T00:00:10Z").timestamp(), Ordering::SeqCst);
    wait_until("rotation", || archive::list(&root).unwrap().len() == 1);
    sender.send((0..10).map(|i| flow(t0 + 150_000 + i, 100)).collect());
    drop(sender);
    handle.join().unwrap();
    let files = archive::list(&root).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.path.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "2026/12/31/flows-202612312355.parquet",
            "2027/01/01/flows-202701010000.parquet"
        ]
    );
    let options = archive::query::QueryOptions {
        from: at("2026-12-31T00:00:00Z"),
        to: at("2027-01-02T00:00:00Z"),
        filter: archive::filter::Filter::All,
        by: Some(flowstage::report::ReportBy::Total),
        top: 10,
        limit: 0,
        direction: flowstage::collector::batch::Direction::In,
        threads: 2,
        interfaces: None,
    };
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let (result, stats) = archive::query::run(&paths, &options, &Default::default()).unwrap();
    let archive::query::QueryResult::Report(r) = result else {
        panic!("a report")
    };
    assert_eq!(r.total.flows, 2510);
    assert_eq!(r.total.bytes, 251_000);
    assert_eq!(stats.row_groups, 4, "1000 + 1000 + 500 rows, then 10");

    // Caps: the size cap removes the oldest first; the age cap everything older.
    let sizes: Vec<u64> = files.iter().map(|f| f.bytes).collect();
    let removed =
        archive::enforce_caps(&root, sizes[1], at("2026-12-01T00:00:00Z"), 300, true).unwrap();
    assert_eq!(removed.len(), 1, "dry run: the oldest would go");
    assert_eq!(
        archive::list(&root).unwrap().len(),
        2,
        "a dry run removes nothing"
    );
    let removed =
        archive::enforce_caps(&root, sizes[1], at("2026-12-01T00:00:00Z"), 300, false).unwrap();
    assert_eq!(removed[0].path, files[0].path);
    assert!(!root.join("2026").exists(), "empty date directories go too");
    // The age cap: a file goes once its window has ended before the limit.
    let removed =
        archive::enforce_caps(&root, 1 << 30, at("2027-01-01T00:04:59Z"), 300, false).unwrap();
    assert!(removed.is_empty());
    let removed =
        archive::enforce_caps(&root, 1 << 30, at("2027-01-01T00:05:00Z"), 300, false).unwrap();
    assert_eq!(removed.len(), 1);
    assert!(archive::list(&root).unwrap().is_empty());
}

#[test]
fn a_killed_collector_leaves_a_file_readable_up_to_its_last_block() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("archive_crash");
    let dir = support::data_dir("archive-crash");
    // One file a day, so that no rotation finishes the file during the test.
    let config = dir.path().join("flowstage.toml");
    std::fs::write(&config, "[collector]\narchive_rotate_secs = 86400\n").unwrap();
    let c = Collector::start(&url, dir.path(), &["--config", config.to_str().unwrap()]);
    // 300 000 flows: two blocks of 131 072 are written, the rest is still buffered.
    let opts = GenOptions {
        seed: 3,
        flows: 300_000,
        rate: Some(200_000),
        exporters: 2,
        first_source: 20,
        ..GenOptions::new(EncodeProtocol::Ipfix, c.target())
    };
    let e = gen::run(&opts, |_| {}).unwrap();
    c.wait_for("all flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == e.total.flows
    });
    let root = archive::root(dir.path());
    let footers = || {
        walk(&root)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".footer"))
            .count()
    };
    wait_until("a journaled block", || footers() == 1);
    let sidecar = walk(&root)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".footer"))
        .unwrap();
    // The sidecar is replaced after each block: wait for the second.
    let first = archive::journaled_rows(&sidecar).unwrap();
    wait_until("a second block", || {
        archive::journaled_rows(&sidecar).is_some_and(|n| n > first)
    });
    // No third block can come: 300 000 flows fill two, and 30 s have not passed.
    let journaled = archive::journaled_rows(&sidecar).unwrap();
    c.signal(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    assert!(
        finished_files(dir.path()).is_empty(),
        "the open file is not read as complete"
    );
    let open: Vec<PathBuf> = walk(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".open"))
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    let sealed = archive::recover(&root).unwrap();
    assert_eq!(sealed.len(), 1);
    let v = query(dir.path(), &["--by", "total"]);
    let flows = support::totals(&v).2;
    assert_eq!(flows, journaled, "every complete block and nothing else");
    assert!((2 * 131_072..e.total.flows).contains(&flows), "{flows}");
    assert!(
        !sidecar.exists(),
        "the sidecar goes once the file is sealed"
    );
    if let Some(python) = duckdb_python() {
        let (rows, ..) = duckdb_totals(&python, &finished_files(dir.path()));
        assert_eq!(rows, flows);
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    archive::files_under(root).unwrap()
}
