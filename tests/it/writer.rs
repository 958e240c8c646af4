//! The writer against a real PostgreSQL: a batch written twice (a replay after a lost
//! acknowledgement) is stored once, and a batch's rows add up in every table.
#![allow(clippy::unwrap_used)]

use crate::support;

use std::sync::{Arc, Mutex};

use flowstage::collector::batch::{Batch, Bucket, Dimension, DimensionRows, Direction, Key};
use flowstage::collector::spool::Spool;
use flowstage::collector::stats::GlobalStats;
use flowstage::collector::writer::{WriteOutcome, Writer};
use flowstage::totals::Totals;
use support::Pg;

fn t(bytes: u64) -> Totals {
    Totals {
        bytes,
        packets: bytes / 100,
        flows: 1,
    }
}

/// The minute every test batch is in: two minutes ago.
fn minute() -> i64 {
    chrono::Utc::now().timestamp() / 60 * 60 - 120
}

fn batch(id: &str) -> Batch {
    let rows = |keys: Vec<Key>| {
        keys.into_iter()
            .zip([600, 400])
            .map(|(k, b)| (k, t(b)))
            .collect()
    };
    Batch {
        id: id.to_string(),
        buckets: vec![Bucket {
            minute: minute(),
            exporter: "192.0.2.7".parse().unwrap(),
            ifindex: 70_000,
            direction: Direction::In,
            totals: vec![(1, t(600)), (64, t(400))],
            dimensions: vec![
                DimensionRows {
                    dimension: Dimension::SrcAs,
                    rows: rows(vec![Key::As(4_200_000_001), Key::Other]),
                },
                DimensionRows {
                    dimension: Dimension::DstIp,
                    rows: rows(vec![
                        Key::Ip("2001:db8::1".parse().unwrap()),
                        Key::Ip("10.0.0.1".parse().unwrap()),
                    ]),
                },
                DimensionRows {
                    dimension: Dimension::DstPort,
                    rows: rows(vec![Key::Port(443), Key::Other]),
                },
                DimensionRows {
                    dimension: Dimension::Proto,
                    rows: rows(vec![Key::Proto(6), Key::Proto(17)]),
                },
            ],
        }],
        counters: Vec::new(),
    }
}

#[test]
fn a_batch_written_twice_is_stored_once() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("writer_twice");
    let dir = support::data_dir("writer");
    let spool = Spool::open(&dir.path().join("spool"), 1 << 20).unwrap();
    let mut writer = Writer::new(url, spool, Arc::new(Mutex::new(GlobalStats::default())));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        writer.connect().await.unwrap();
        assert_eq!(
            writer.write(&batch("x-1")).await.unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            writer.write(&batch("x-1")).await.unwrap(),
            WriteOutcome::Duplicate
        );
        assert_eq!(
            writer.write(&batch("x-2")).await.unwrap(),
            WriteOutcome::Written
        );
    });
    let sum = |table: &str, extra: &str| {
        pg.psql(
            &db,
            &format!("SELECT sum(bytes) FROM {table} WHERE ifindex = 70000 {extra}"),
        )
    };
    // Two distinct batches, each 1000 bytes: every table says 2000, none 3000.
    assert_eq!(sum("flow_totals", ""), "2000");
    assert_eq!(sum("flow_as", "AND side = 0"), "2000");
    assert_eq!(sum("flow_ip", "AND side = 1"), "2000");
    assert_eq!(sum("flow_port", "AND side = 1"), "2000");
    assert_eq!(sum("flow_proto", ""), "2000");
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM flow_as WHERE asn IS NULL"),
        "2",
        "other rows"
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT string_agg(DISTINCT sampling_rate::text, ',') FROM flow_totals"
        ),
        "1,64"
    );
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM ingest_batches"), "2");
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM interfaces WHERE ifindex = 70000"),
        "1"
    );
    // First and last seen come from the flows' minute, not from the time of writing.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT first_seen = (SELECT min(minute) FROM flow_totals)
                    AND last_seen = first_seen + interval '1 minute' FROM interfaces"
        ),
        "t"
    );
}
