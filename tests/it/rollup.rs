//! History: rollups to hour, day, week, month and year must keep every total exact
//! across month and year boundaries in a non-UTC zone, survive re-runs, interruptions,
//! gaps and late minutes, and retention must drop whole partitions exactly at the
//! boundary while reports stay correct from the rollups.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::{self, collector_bin, report_rows, totals, Collector, Pg};

/// Minute data for a test: every minute of [from, to), 2 exporters × 2 interfaces ×
/// 2 directions; 8 addresses (and an "other" row) per side, so a top 3 folds.
fn load_minutes(pg: &Pg, db: &str, from: &str, to: &str) {
    // The schema first, as the collector would create it.
    run_ok(
        &support::empty_config().to_path_buf(),
        &pg.url(db),
        "purge",
        &["--dry-run"],
    );
    pg.psql(
        db,
        &format!(
            "SELECT count(flowstage_ensure_day(d::date)) FROM generate_series(date '{from}' - 1, date '{to}' + 1, interval '1 day') d;
             INSERT INTO exporters (address, name) VALUES ('192.0.2.1', 'r1'), ('192.0.2.2', 'r2') ON CONFLICT DO NOTHING;
             INSERT INTO interfaces (exporter_id, ifindex) SELECT e.id, i FROM exporters e, generate_series(1, 2) i ON CONFLICT DO NOTHING;
             CREATE TEMP TABLE b AS SELECT m AS minute, i.exporter_id, i.ifindex, d AS direction
               FROM generate_series(timestamptz '{from}', timestamptz '{to}' - interval '1 minute', interval '1 minute') m,
                    interfaces i, generate_series(0, 1) d;
             INSERT INTO flow_totals SELECT minute, exporter_id, ifindex, direction, 1,
               1000 + extract(minute FROM minute)::int * 7 + exporter_id * 3 + ifindex, 10 + direction, 2 FROM b;
             INSERT INTO flow_proto SELECT minute, exporter_id, ifindex, direction, p, 100 * p + ifindex, p, 1
               FROM b, (VALUES (1), (6), (17)) v(p);
             INSERT INTO flow_as SELECT minute, exporter_id, ifindex, direction, s, 64500 + k, 50 * k + s, k, 1
               FROM b, generate_series(0, 1) s, generate_series(1, 5) k;
             INSERT INTO flow_port SELECT minute, exporter_id, ifindex, direction, s, 1000 + k, 30 * k, k, 1
               FROM b, generate_series(0, 1) s, generate_series(1, 4) k;
             INSERT INTO flow_ip SELECT minute, exporter_id, ifindex, direction, s, ('10.0.0.' || k)::inet,
               100 * k + (extract(minute FROM minute)::int + k) % 5, k, 1
               FROM b, generate_series(0, 1) s, generate_series(1, 8) k;
             INSERT INTO flow_ip SELECT minute, exporter_id, ifindex, direction, s, NULL, 7, 1, 1
               FROM b, generate_series(0, 1) s;"
        ),
    );
}

/// A configuration for the rollups: Berlin time, a top 3 so that "other" is exercised.
fn config(dir: &tempfile::TempDir, extra: &str) -> PathBuf {
    let path = dir.path().join("flowstage.toml");
    std::fs::write(
        &path,
        format!("[history]\ntimezone = \"Europe/Berlin\"\n\n[collector]\ntop_n = 3\n{extra}"),
    )
    .unwrap();
    path
}

fn run(config: &PathBuf, url: &str, command: &str, args: &[&str]) -> Output {
    Command::new(collector_bin())
        .args([command, "--database", url, "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn run_ok(config: &PathBuf, url: &str, command: &str, args: &[&str]) -> String {
    let out = run(config, url, command, args);
    assert!(
        out.status.success(),
        "{command} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `report --format json` over [from, to) with `extra` arguments.
fn report(url: &str, by: &str, from: &str, to: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(collector_bin())
        .args(["report", "--database", url, "--config"])
        .arg(support::empty_config())
        .args(["--from", from, "--to", to, "--by", by, "--format", "json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const KINDS: [(&str, &str); 5] = [
    ("flow_totals", "exporter_id, ifindex, direction"),
    ("flow_proto", "exporter_id, ifindex, direction, proto"),
    ("flow_as", "exporter_id, ifindex, direction, side"),
    ("flow_port", "exporter_id, ifindex, direction, side"),
    ("flow_ip", "exporter_id, ifindex, direction, side"),
];
const LEVELS: [&str; 6] = ["5min", "hour", "day", "week", "month", "year"];

/// Per-group sums of a table as text, for comparison between levels.
fn sums(pg: &Pg, db: &str, table: &str, group: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT string_agg(g, ';' ORDER BY g) FROM (
                 SELECT concat_ws(',', {group}, sum(bytes), sum(packets), sum(flows)) AS g
                 FROM {table} GROUP BY {group}) x"
        ),
    )
}

/// Every level holds exactly the minute tables' sums, per exporter, interface,
/// direction and side (or protocol).
fn assert_every_level_exact(pg: &Pg, db: &str) {
    for (kind, group) in KINDS {
        let minute = sums(pg, db, kind, group);
        assert!(!minute.is_empty(), "{kind} has minute data");
        for level in LEVELS {
            assert_eq!(
                sums(pg, db, &format!("{kind}_{level}"), group),
                minute,
                "{kind} rolled up to {level}"
            );
        }
    }
}

#[test]
fn every_level_sums_exactly_across_month_and_year_boundaries() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("rollup_exact");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, "");
    // New Year's Eve in Berlin (a year, month, day and ISO week boundary at 23:00 UTC)
    // and the end of January (a month boundary).
    load_minutes(pg, &db, "2025-12-31 18:00Z", "2026-01-01 06:00Z");
    load_minutes(pg, &db, "2026-01-31 20:00Z", "2026-02-01 02:00Z");
    let out = run_ok(&config, &url, "rollup", &["--now", "2027-01-03T00:00:00Z"]);
    assert!(out.contains("hour"), "{out}");
    assert_every_level_exact(pg, &db);
    // Buckets are Berlin's: days, weeks, months and years begin at local midnight.
    assert_eq!(
        pg.psql(&db, "SELECT string_agg(DISTINCT to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), ' ') FROM flow_totals_year"),
        "2024-12-31 23:00 2025-12-31 23:00"
    );
    assert_eq!(
        pg.psql(&db, "SELECT string_agg(DISTINCT to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), ' ') FROM flow_totals_month"),
        "2025-11-30 23:00 2025-12-31 23:00 2026-01-31 23:00"
    );
    // ISO weeks start on Monday: 2025-12-29 and 2026-01-26.
    assert_eq!(
        pg.psql(&db, "SELECT string_agg(DISTINCT to_char(bucket AT TIME ZONE 'Europe/Berlin', 'IYYY-IW Dy'), ' ') FROM flow_totals_week"),
        "2026-01 Mon 2026-05 Mon"
    );
    // Top 3 + "other" at every level: never more than 3 named keys per bucket and
    // group, and the 3 kept are the bucket's 3 largest with their exact sums.
    for level in LEVELS {
        assert_eq!(
            pg.psql(
                &db,
                &format!(
                    "SELECT max(n) FROM (SELECT count(addr) AS n FROM flow_ip_{level}
                 GROUP BY bucket, exporter_id, ifindex, direction, side) x"
                )
            ),
            "3",
            "{level}"
        );
    }
    assert_eq!(
        pg.psql(
            &db,
            "WITH m AS (
                 SELECT flowstage_bucket('hour', minute, 'Europe/Berlin', 1, 0) AS bucket,
                        exporter_id, ifindex, direction, side, addr, sum(bytes) AS bytes
                 FROM flow_ip WHERE addr IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6),
             ranked AS (
                 SELECT *, row_number() OVER (PARTITION BY bucket, exporter_id, ifindex, direction, side
                                              ORDER BY bytes DESC, addr) AS rn FROM m)
             SELECT count(*) FROM (
                 SELECT bucket, exporter_id, ifindex, direction, side, addr, bytes FROM ranked WHERE rn <= 3
                 EXCEPT
                 SELECT bucket, exporter_id, ifindex, direction, side, addr, bytes FROM flow_ip_hour WHERE addr IS NOT NULL) d"
        ),
        "0"
    );
    // Reports read whole days from the day level, and agree with the minutes.
    let v = report(
        &url,
        "proto",
        "2025-12-30T23:00:00Z",
        "2026-01-01T23:00:00Z",
        &[],
    );
    let sources: Vec<&str> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["day 2025-12-30T23:00:00+00:00/2026-01-01T23:00:00+00:00"]
    );
    let from_minutes = pg.psql(
        &db,
        "SELECT concat_ws(' ', sum(bytes), sum(packets), sum(flows)) FROM flow_totals WHERE direction = 0
         AND minute >= '2025-12-30T23:00Z' AND minute < '2026-01-01T23:00Z'",
    );
    let t = totals(&v);
    assert_eq!(format!("{} {} {}", t.0, t.1, t.2), from_minutes);
}

#[test]
fn reruns_interruptions_gaps_and_late_minutes_never_double_count() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("rollup_rerun");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, "");
    load_minutes(pg, &db, "2025-12-31 18:00Z", "2026-01-01 06:00Z");
    // Interrupted after three chunks: what was committed stays, the rest follows.
    let out = run(
        &config,
        &url,
        "rollup",
        &["--now", "2027-01-03T00:00:00Z", "--stop-after-chunks", "3"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped after 3 chunks"));
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM rollup_levels WHERE done_to IS NOT NULL"
        ),
        "1",
        "only five minutes were rolled up before the interruption"
    );
    run_ok(&config, &url, "rollup", &["--now", "2027-01-03T00:00:00Z"]);
    assert_every_level_exact(pg, &db);
    // A second run has nothing to do.
    let json = run_ok(
        &config,
        &url,
        "rollup",
        &["--now", "2027-01-03T00:00:00Z", "--json"],
    );
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    for level in summary.as_array().unwrap() {
        assert_eq!(level["new_buckets"], 0, "{level}");
        assert_eq!(level["rows_written"], 0, "{level}");
    }
    assert_every_level_exact(pg, &db);
    // Recomputing a period on demand replaces, never adds.
    let json = run_ok(
        &config,
        &url,
        "rollup",
        &[
            "--now",
            "2027-01-03T00:00:00Z",
            "--from",
            "2025-12-31T20:00:00Z",
            "--to",
            "2026-01-01T02:00:00Z",
            "--json",
        ],
    );
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(summary[0]["level"], "5min");
    assert_eq!(summary[0]["redone_buckets"], 6 * 12);
    assert_eq!(summary[1]["level"], "hour");
    assert_eq!(summary[1]["redone_buckets"], 6);
    assert_every_level_exact(pg, &db);

    // Late minutes into hours (and so days, weeks, months, years) already rolled up,
    // written the way the collector writes them.
    pg.psql(
        &db,
        "BEGIN;
         INSERT INTO flow_totals VALUES ('2025-12-31T21:17Z', 1, 1, 0, 1, 5555, 55, 5);
         INSERT INTO flow_proto VALUES ('2025-12-31T21:17Z', 1, 1, 0, 6, 5555, 55, 5);
         INSERT INTO flow_ip VALUES ('2025-12-31T21:17Z', 1, 1, 0, 1, '10.9.9.9', 5555, 55, 5);
         SELECT flowstage_minutes_written('2025-12-31T21:17Z', '2025-12-31T21:17Z');
         COMMIT;",
    );
    assert_eq!(
        pg.psql(&db, "SELECT string_agg(level || ' ' || to_char(bucket AT TIME ZONE 'UTC', 'HH24:MI'), ',' ORDER BY level) FROM rollup_dirty"),
        "5min 21:15,hour 21:00"
    );
    let json = run_ok(
        &config,
        &url,
        "rollup",
        &["--now", "2027-01-03T00:00:00Z", "--json"],
    );
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    let redone: Vec<i64> = summary
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["redone_buckets"].as_i64().unwrap())
        .collect();
    assert_eq!(
        redone,
        [1, 1, 1, 1, 1, 1],
        "the five minutes, the hour and every level above it"
    );
    assert_every_level_exact(pg, &db);
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM rollup_dirty"), "0");
}

#[test]
fn catches_up_after_a_gap() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("rollup_gap");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, "");
    load_minutes(pg, &db, "2025-12-31 18:00Z", "2026-01-01 06:00Z");
    // Partway: hours up to 01:00 UTC are complete (the grace is 3 minutes).
    run_ok(&config, &url, "rollup", &["--now", "2026-01-01T01:02:59Z"]);
    assert_eq!(
        pg.psql(&db, "SELECT to_char(done_to AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM rollup_levels WHERE level = 'hour'"),
        "2026-01-01 00:00"
    );
    // Then nothing ran for weeks while more data came in.
    load_minutes(pg, &db, "2026-01-20 10:00Z", "2026-01-20 12:00Z");
    run_ok(&config, &url, "rollup", &["--now", "2027-01-03T00:00:00Z"]);
    assert_every_level_exact(pg, &db);
}

#[test]
fn purge_drops_whole_partitions_exactly_at_the_boundary() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("rollup_purge");
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &dir,
        "\n[retention]\nminute_days = 7\nhour_days = 30\nday_days = 60\n",
    );
    load_minutes(pg, &db, "2025-12-31 18:00Z", "2026-01-01 06:00Z");
    let partitions = |level: &str| {
        pg.psql(
            &db,
            &format!(
                "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_inherits i
                      JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                      WHERE p.relname = 'flow_totals{level}'"
            ),
        )
    };
    assert_eq!(
        partitions(""),
        "flow_totals_20251230 flow_totals_20251231 flow_totals_20260101 flow_totals_20260102"
    );
    // Not rolled up yet: kept, and said why.
    let out = run_ok(&config, &url, "purge", &["--now", "2026-01-10T00:00:00Z"]);
    assert!(out.contains("kept: not rolled up to 5min yet"), "{out}");
    assert_eq!(partitions("").split(' ').count(), 4);

    let before: Vec<serde_json::Value> = ["total", "proto", "dst-ip", "src-as"]
        .iter()
        .map(|by| {
            report(
                &url,
                by,
                "2025-12-31T00:00:00Z",
                "2026-01-02T00:00:00Z",
                &["--top", "2"],
            )
        })
        .collect();
    run_ok(&config, &url, "rollup", &["--now", "2026-01-04T00:00:00Z"]);
    // 2026-01-08 00:00 is exactly seven days after the end of 20251231 and of 20251230.
    let out = run_ok(
        &config,
        &url,
        "purge",
        &["--now", "2026-01-07T23:59:59Z", "--dry-run"],
    );
    assert!(
        out.contains("20251230") && !out.contains("20251231"),
        "{out}"
    );
    let out = run_ok(
        &config,
        &url,
        "purge",
        &["--now", "2026-01-08T00:00:00Z", "--dry-run"],
    );
    assert!(
        out.contains("20251231 (ends 2026-01-01T00:00:00+00:00)  would be dropped"),
        "{out}"
    );
    assert_eq!(
        partitions("").split(' ').count(),
        4,
        "a dry run drops nothing"
    );
    let out = run_ok(&config, &url, "purge", &["--now", "2026-01-08T00:00:00Z"]);
    assert!(
        out.contains("20251231 (ends 2026-01-01T00:00:00+00:00)  dropped"),
        "{out}"
    );
    assert_eq!(partitions(""), "flow_totals_20260101 flow_totals_20260102");
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM pg_class WHERE relname ~ '^flow_(as|ip|port|proto)_20251231$'"
        ),
        "0",
        "every kind's partition of the day goes"
    );
    // The rest of the minutes go too; reports over the period now come from hours and
    // are unchanged.
    run_ok(&config, &url, "purge", &["--now", "2026-01-10T00:00:00Z"]);
    assert_eq!(partitions(""), "");
    for (by, want) in ["total", "proto", "dst-ip", "src-as"].iter().zip(&before) {
        let v = report(
            &url,
            by,
            "2025-12-31T00:00:00Z",
            "2026-01-02T00:00:00Z",
            &["--top", "2"],
        );
        assert_eq!(totals(&v), totals(want), "{by}");
        assert_eq!(report_rows(&v), report_rows(want), "{by}");
        assert!(
            v["sources"].to_string().contains("day "),
            "{by}: {}",
            v["sources"]
        );
    }
    // Hours go after 30 days, by whole UTC months: December 2025 once its end is 30
    // days old.
    assert_eq!(
        partitions("_hour"),
        "flow_totals_hour_202512 flow_totals_hour_202601"
    );
    run_ok(&config, &url, "purge", &["--now", "2026-01-30T23:59:59Z"]);
    assert_eq!(
        partitions("_hour"),
        "flow_totals_hour_202512 flow_totals_hour_202601"
    );
    run_ok(&config, &url, "purge", &["--now", "2026-01-31T00:00:00Z"]);
    assert_eq!(partitions("_hour"), "flow_totals_hour_202601");
    let v = report(
        &url,
        "proto",
        "2025-12-31T00:00:00Z",
        "2026-01-02T00:00:00Z",
        &[],
    );
    assert_eq!(totals(&v), totals(&before[1]), "days still hold the period");
}

#[test]
fn collector_traffic_stays_exact_after_rollup_and_purge() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("rollup_e2e");
    let dir = support::data_dir("rollup-e2e");
    let c = Collector::start(&url, dir.path(), &[]);
    let opts = flowstage::gen::GenOptions {
        seed: 11,
        flows: 20_000,
        rate: Some(100_000),
        exporters: 2,
        first_source: 20,
        ..flowstage::gen::GenOptions::new(flowstage::encode::EncodeProtocol::Ipfix, c.target())
    };
    let e = flowstage::gen::run(&opts, |_| {}).unwrap();
    c.wait_for("all flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == e.total.flows
    });
    let (status, log) = c.terminate();
    assert!(status.success(), "collector exit: {status}\n{log}");
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = cfg_dir.path().join("flowstage.toml");
    std::fs::write(&config, "[collector]\ntop_n = 1000\n").unwrap();
    let now = chrono::Utc::now();
    let at = |days: i64| (now + chrono::Duration::days(days)).to_rfc3339();
    run_ok(&config, &url, "rollup", &["--now", &at(2)]);
    run_ok(&config, &url, "purge", &["--now", &at(9)]);
    // Every minute partition holding the traffic is gone. (The report may still
    // list a minute segment after the purge horizon, where the last day's partition
    // has not been created: that happens when the period ends past midnight UTC.)
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM flow_totals"), "0");
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'flow_totals'"),
        "0",
        "minute partitions left after the purge"
    );
    let v = support::report(&url, "total", &[]);
    assert!(
        v["sources"].to_string().contains("day") || v["sources"].to_string().contains("hour"),
        "read from rollups: {}",
        v["sources"]
    );
    let expect = (e.total.bytes, e.total.packets, e.total.flows);
    assert_eq!(totals(&v), expect);
    for by in ["exporter", "interface", "dst-port", "proto", "src-as"] {
        let v = support::report(&url, by, &[]);
        assert_eq!(totals(&v), expect, "{by}");
        assert_eq!(
            report_rows(&v),
            support::expected_rows(&e, by),
            "rows of {by}"
        );
    }
}
