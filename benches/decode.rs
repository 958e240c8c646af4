//! Decoding and aggregation throughput, in flows per second on one core.
//!
//! Realistic datagrams are built once with `flowstage::encode` from the generator's
//! traffic model: NetFlow v5 with 30 records per datagram, NetFlow v9 and IPFIX with the
//! template in a first datagram and then data datagrams of 24 IPv4 records each. Each
//! protocol is decoded by Flowstage (templates already cached: the steady state of a
//! collector) and by the `netflow_parser` crate on exactly the same bytes, and the
//! decoded records are pushed through the collector's per-minute [`Aggregator`]. sFlow
//! v5 (datagrams of eight raw-header flow samples) is decoded by Flowstage alone: no
//! crate to compare with decodes it.
//!
//! ```sh
//! cargo bench --bench decode
//! ```
//!
//! Results and the machine they came from: `docs/benchmarks.md`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flowstage::collector::aggregate::Aggregator;
use flowstage::decode::{decode_datagram, Decoder, FlowRecord, Limits};
use flowstage::encode::{
    encode_v5, records_per_datagram, EncodeProtocol, TemplateExporter, V5Header,
};
use flowstage::gen::{SplitMix64, TrafficModel};
use netflow_parser::{NetflowPacket, NetflowParser};

/// Data datagrams per protocol decoded in one benchmark iteration.
const DATAGRAMS: usize = 256;
/// Receive time of every datagram (2024-06-01T12:00:00Z); flows end up to 31 s before.
const NOW_MS: i64 = 1_717_243_200_000;
const EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// The bytes of one protocol: `setup` carries the template (empty for v5) and is decoded
/// once before timing; `data` is what every iteration decodes.
struct Workload {
    name: &'static str,
    setup: Vec<Vec<u8>>,
    data: Vec<Vec<u8>>,
    records: usize,
}

fn flows(rng: &mut SplitMix64, model: &TrafficModel, n: usize) -> Vec<FlowRecord> {
    (0..n)
        .map(|_| {
            // Like `flowstage-collector gen`: end times spread over 30 s, at least 1 s old.
            let end = NOW_MS - 1000 - rng.below(30_000) as i64;
            model.flow(rng, end)
        })
        .collect()
}

fn workload(protocol: EncodeProtocol) -> Workload {
    let model = TrafficModel {
        ipv6: false,
        wide_as: protocol != EncodeProtocol::V5,
        interfaces: 4,
        as_count: 50,
    };
    let mut rng = SplitMix64::new(42);
    let per = records_per_datagram(protocol, false);
    let boot_ms = NOW_MS - 3_600_000;
    match protocol {
        EncodeProtocol::V5 => {
            let data = (0..DATAGRAMS)
                .map(|i| {
                    let h = V5Header {
                        sys_uptime_ms: (NOW_MS - boot_ms) as u32,
                        unix_ms: NOW_MS,
                        flow_sequence: (i * per) as u32,
                        sampling_interval: 0,
                        ..V5Header::default()
                    };
                    encode_v5(&h, &flows(&mut rng, &model, per))
                })
                .collect();
            Workload {
                name: "v5",
                setup: Vec::new(),
                data,
                records: DATAGRAMS * per,
            }
        }
        EncodeProtocol::V9 | EncodeProtocol::Ipfix => {
            let mut x = TemplateExporter::new(protocol, false, 1, boot_ms);
            let setup = vec![x.datagram(NOW_MS, &flows(&mut rng, &model, per), true)];
            let data = (0..DATAGRAMS)
                .map(|_| x.datagram(NOW_MS, &flows(&mut rng, &model, per), false))
                .collect();
            Workload {
                name: if protocol == EncodeProtocol::V9 {
                    "v9"
                } else {
                    "ipfix"
                },
                setup,
                data,
                records: DATAGRAMS * per,
            }
        }
        EncodeProtocol::Sflow => sflow_workload(),
    }
}

/// A decoder that has seen the workload's templates.
fn primed_decoder(w: &Workload) -> Decoder {
    let mut decoder = Decoder::new(Limits::default());
    let mut out = Vec::new();
    for d in &w.setup {
        decode_datagram(&mut decoder, EXPORTER, NOW_MS, d, &mut out).unwrap();
    }
    decoder
}

/// Decode every data datagram with Flowstage, reusing one output buffer per datagram as
/// the collector's worker does; returns the records decoded.
fn decode_ours(decoder: &mut Decoder, w: &Workload, out: &mut Vec<FlowRecord>) -> usize {
    let mut n = 0;
    for d in &w.data {
        out.clear();
        let summary = decode_datagram(decoder, EXPORTER, NOW_MS, black_box(d), out);
        n += black_box(summary).map_or(0, |s| s.records);
    }
    n
}

/// A `netflow_parser` parser that has seen the workload's templates.
fn primed_parser(w: &Workload) -> NetflowParser {
    let mut parser = NetflowParser::default();
    for d in &w.setup {
        for p in parser.iter_packets(d) {
            assert!(
                !p.is_error(),
                "netflow_parser failed on the template: {p:?}"
            );
        }
    }
    parser
}

/// Flow records in one `netflow_parser` result (data records only).
fn count_theirs(p: &NetflowPacket) -> usize {
    use netflow_parser::variable_versions::{ipfix, v9};
    match p {
        NetflowPacket::V5(v) => v.flowsets.len(),
        NetflowPacket::V9(v) => v
            .flowsets
            .iter()
            .map(|f| match &f.body {
                v9::FlowSetBody::Data(d) => d.fields.len(),
                _ => 0,
            })
            .sum(),
        NetflowPacket::IPFix(v) => v
            .flowsets
            .iter()
            .map(|f| match &f.body {
                ipfix::FlowSetBody::Data(d) => d.fields.len(),
                _ => 0,
            })
            .sum(),
        NetflowPacket::V7(_) | NetflowPacket::Error(_) => 0,
    }
}

/// Parse every data datagram with `netflow_parser`: `iter_packets` on a long-lived
/// parser (templates cached, no result `Vec`), each packet dropped after use.
fn decode_theirs(parser: &mut NetflowParser, w: &Workload) -> usize {
    let mut n = 0;
    for d in &w.data {
        for p in parser.iter_packets(black_box(d)) {
            n += usize::from(!black_box(p).is_error());
        }
    }
    n
}

/// Short runs, so that `cargo bench` finishes in a few minutes on a small machine.
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g
}

fn bench_decode(c: &mut Criterion) {
    let workloads = [
        workload(EncodeProtocol::V5),
        workload(EncodeProtocol::V9),
        workload(EncodeProtocol::Ipfix),
    ];
    let mut g = group(c, "decode");
    for w in &workloads {
        // Both decoders must really decode every record of the same bytes.
        let mut decoder = primed_decoder(w);
        let mut out = Vec::with_capacity(64);
        let mut ours = 0;
        for d in &w.data {
            out.clear();
            let s = decode_datagram(&mut decoder, EXPORTER, NOW_MS, d, &mut out).unwrap();
            assert!(s.set_errors.is_empty() && s.held_sets == 0, "{s:?}");
            ours += out.len();
        }
        assert_eq!(ours, w.records, "flowstage on {}", w.name);
        let mut parser = primed_parser(w);
        let mut theirs = 0;
        for d in &w.data {
            for p in parser.iter_packets(d) {
                assert!(!p.is_error(), "netflow_parser on {}: {p:?}", w.name);
                theirs += count_theirs(&p);
            }
        }
        assert_eq!(theirs, w.records, "netflow_parser on {}", w.name);

        g.throughput(Throughput::Elements(w.records as u64));
        g.bench_function(format!("flowstage/{}", w.name), |b| {
            b.iter(|| decode_ours(&mut decoder, w, &mut out))
        });
        g.bench_function(format!("netflow_parser/{}", w.name), |b| {
            b.iter(|| decode_theirs(&mut parser, w))
        });
    }
    // sFlow: no peer crate decodes it, so Flowstage alone, on datagrams of eight
    // raw-header flow samples (Ethernet, IPv4, TCP/UDP), as switches send them.
    let w = sflow_workload();
    let mut decoder = primed_decoder(&w);
    let mut out = Vec::with_capacity(64);
    let mut decoded = 0;
    for d in &w.data {
        out.clear();
        let s = decode_datagram(&mut decoder, EXPORTER, NOW_MS, d, &mut out).unwrap();
        assert!(s.set_errors.is_empty(), "{s:?}");
        decoded += out.len();
    }
    assert_eq!(decoded, w.records, "flowstage on sflow");
    g.throughput(Throughput::Elements(w.records as u64));
    g.bench_function("flowstage/sflow", |b| {
        b.iter(|| decode_ours(&mut decoder, &w, &mut out))
    });
    g.finish();
}

fn sflow_workload() -> Workload {
    use flowstage::encode::sflow::{
        encode, packet_header, Datagram, FlowData, Interface, PacketSpec, Sample,
    };
    let mut rng = SplitMix64::new(5);
    let data: Vec<Vec<u8>> = (0..DATAGRAMS as u32)
        .map(|seq| {
            let samples = (0..8)
                .map(|i| {
                    let proto = if rng.below(3) == 0 { 17 } else { 6 };
                    Sample::Flow {
                        expanded: false,
                        sequence: seq * 8 + i,
                        source_id: 1,
                        sampling_rate: 1024,
                        sample_pool: 0,
                        drops: 0,
                        input: Interface::index(1 + rng.below(4) as u32),
                        output: Interface::index(1 + rng.below(4) as u32),
                        records: vec![FlowData::RawHeader {
                            protocol: 1,
                            frame_length: 64 + rng.below(1400) as u32,
                            stripped: 4,
                            header: packet_header(&PacketSpec {
                                vlan: Some(10),
                                src: Ipv4Addr::from(0x0a00_0000 | rng.below(1 << 16) as u32).into(),
                                dst: Ipv4Addr::from(0xc000_0200 | rng.below(256) as u32).into(),
                                proto,
                                tos: 0,
                                src_port: 1024 + rng.below(60_000) as u16,
                                dst_port: [80, 443, 53][rng.below(3) as usize],
                                tcp_flags: 0x10,
                                icmp: (0, 0),
                            }),
                        }],
                    }
                })
                .collect();
            encode(&Datagram {
                agent: Some(EXPORTER),
                sub_agent_id: 0,
                sequence: seq + 1,
                uptime_ms: 1000 + seq,
                samples,
            })
        })
        .collect();
    Workload {
        name: "sflow",
        setup: Vec::new(),
        records: data.len() * 8,
        data,
    }
}

/// Flows through the collector's per-minute aggregation: every Stager dimension (AS,
/// IP, port, protocol) in both directions, one datagram's records per
/// [`Aggregator::add_batch`] call as the worker does. `add` starts each iteration from an
/// empty aggregator (new minute buckets, as after a flush); `add_warm` counts the same
/// flows into buckets already filled with them (mostly counting, few inserts).
fn bench_aggregate(c: &mut Criterion) {
    let w = workload(EncodeProtocol::Ipfix);
    let mut decoder = primed_decoder(&w);
    let mut datagrams: Vec<Vec<FlowRecord>> = Vec::with_capacity(w.data.len());
    for d in &w.data {
        let mut out = Vec::new();
        decode_datagram(&mut decoder, EXPORTER, NOW_MS, d, &mut out).unwrap();
        datagrams.push(out);
    }
    let records: usize = datagrams.iter().map(Vec::len).sum();
    assert_eq!(records, w.records);
    // The collector's defaults: collector.top_n and collector.max_keys_per_bucket.
    let new = || Aggregator::new(200, 1024, "bench".to_string());
    let add_all = |agg: &mut Aggregator| {
        for d in &datagrams {
            agg.add_batch(EXPORTER, black_box(d), NOW_MS);
        }
    };
    let mut warm = new();
    add_all(&mut warm);
    let batch = warm.flush(None, 0).unwrap();
    assert_eq!(batch.flows(), records as u64);
    add_all(&mut warm);

    let mut g = group(c, "aggregate");
    g.throughput(Throughput::Elements(records as u64));
    g.bench_function("add", |b| {
        b.iter_batched_ref(new, add_all, BatchSize::SmallInput)
    });
    g.bench_function("add_warm", |b| b.iter(|| add_all(&mut warm)));
    g.finish();
}

criterion_group!(benches, bench_decode, bench_aggregate);
criterion_main!(benches);
