//! sFlow through a running collector: datagrams built by the test encoder with a known
//! set of samples (and the real agents' captures, when present) on the sFlow port give
//! exact report totals (frame length times sampling rate) and exact interface counter
//! deltas; a malformed corpus between valid traffic is counted, kind by kind, and never
//! stops the collector.
#![allow(clippy::unwrap_used)]

use crate::support;

use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

use flowstage::decode::InterfaceCounters;
use flowstage::encode::sflow::{
    encode, packet_header, CounterData, Datagram, FlowData, Interface, PacketSpec, Sample,
};
use support::{report, report_rows, totals, Collector, Pg};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A flow sample of one TCP packet of `frame_length` bytes, sampled 1 in `rate`.
fn flow(seq: u32, rate: u32, frame_length: u32, dst_port: u16, input: u32) -> Sample {
    Sample::Flow {
        expanded: seq % 2 == 0,
        sequence: seq,
        source_id: input,
        sampling_rate: rate,
        sample_pool: seq * rate,
        drops: 0,
        input: Interface::index(input),
        output: Interface::index(2),
        records: vec![
            FlowData::RawHeader {
                protocol: 1,
                frame_length,
                stripped: 4,
                header: packet_header(&PacketSpec {
                    vlan: Some(10),
                    src: ip("192.0.2.10"),
                    dst: ip("198.51.100.20"),
                    proto: 6,
                    tos: 0,
                    src_port: 40_000,
                    dst_port,
                    tcp_flags: 0x10,
                    icmp: (0, 0),
                }),
            },
            FlowData::Gateway {
                next_hop: Some(ip("192.0.2.1")),
                my_as: 64500,
                src_as: 64501,
                src_peer_as: 64502,
                path: vec![(2, vec![64502, 64503])],
                communities: vec![],
                local_pref: 100,
            },
        ],
    }
}

fn counters(ifindex: u32, in_octets: u64, out_octets: u64, in_pkts: u32) -> Sample {
    Sample::Counters {
        expanded: false,
        sequence: 1,
        source_id: ifindex,
        records: vec![CounterData::Interface(InterfaceCounters {
            ifindex,
            if_type: 6,
            speed_bps: 10_000_000_000,
            admin_up: true,
            oper_up: true,
            in_octets,
            in_unicast: in_pkts,
            in_multicast: 0,
            in_broadcast: 0,
            in_errors: 1,
            out_octets,
            out_unicast: 10,
            out_multicast: u32::MAX,
            out_broadcast: 0,
            out_errors: 0,
            ..InterfaceCounters::default()
        })],
    }
}

/// Expected (bytes, packets, flows) of the samples sent.
#[derive(Default, Debug, PartialEq, Eq, Clone, Copy)]
struct Sent(u64, u64, u64);

impl Sent {
    fn add(&mut self, rate: u32, frame_length: u32) {
        let rate = u64::from(rate.max(1));
        self.0 += u64::from(frame_length) * rate;
        self.1 += rate;
        self.2 += 1;
    }
}

/// `datagrams` datagrams of five flow samples each, sequence numbers from 1.
fn send_flows(socket: &UdpSocket, to: std::net::SocketAddr, datagrams: u32, sent: &mut Sent) {
    for d in 0..datagrams {
        let mut samples = Vec::new();
        for s in 0..5u32 {
            let n = d * 5 + s;
            let (rate, len) = ([0, 1, 64, 1000, 4096][s as usize], 64 + (n % 1400));
            samples.push(flow(n + 1, rate, len, 443 + (s as u16), 1 + s % 2));
            sent.add(rate, len);
        }
        let bytes = encode(&Datagram {
            agent: Some(ip("10.0.0.1")),
            sub_agent_id: 3,
            sequence: d + 1,
            uptime_ms: 1_000 + d,
            samples,
        });
        socket.send_to(&bytes, to).unwrap();
        if d % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn flow_and_counter_samples_end_to_end() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("sflow_e2e");
    let dir = support::data_dir("sflow-e2e");
    let c = Collector::start(&url, dir.path(), &[]);
    let agent = UdpSocket::bind("127.0.0.71:0").unwrap();
    let mut sent = Sent::default();
    send_flows(&agent, c.sflow_target(), 300, &mut sent);

    // Counters of ifIndex 5: a first sample, a step to near the top of the 32-bit
    // packet counter, a wrap of it, a reset (octets back to 0: not a delta), then a
    // step after the reset. out_multicast is unknown (all ones): no out_packets.
    let steps: [(u32, u64, u64, u32); 5] = [
        (10_000, 1_000_000, 500_000, 100),
        (40_000, 4_000_000, 800_000, u32::MAX - 99),
        (70_000, 9_000_000, 900_000, 400),
        (100_000, 0, 0, 5),
        (130_000, 37_500, 10_000, 15),
    ];
    for (i, (uptime, in_octets, out_octets, pkts)) in steps.iter().enumerate() {
        let bytes = encode(&Datagram {
            agent: Some(ip("10.0.0.1")),
            sub_agent_id: 3,
            sequence: 301 + i as u32,
            uptime_ms: *uptime,
            samples: vec![counters(5, *in_octets, *out_octets, *pkts)],
        });
        agent.send_to(&bytes, c.sflow_target()).unwrap();
        // Distinct receive times (the rows' key).
        std::thread::sleep(Duration::from_millis(30));
    }
    // ifIndex 6: three samples sent back to back, likely read in one batch with one
    // receive time; each delta still gets its own row.
    for (i, uptime) in [10_000u32, 40_000, 70_000].into_iter().enumerate() {
        let bytes = encode(&Datagram {
            agent: Some(ip("10.0.0.1")),
            sub_agent_id: 3,
            sequence: 306 + i as u32,
            uptime_ms: uptime,
            samples: vec![counters(6, 1_000 * u64::from(uptime), 0, 0)],
        });
        agent.send_to(&bytes, c.sflow_target()).unwrap();
    }
    let datagrams = 300 + steps.len() as u64 + 3;
    c.wait_for("every sFlow datagram decoded", |c| {
        c.metric(
            "flowstage_exporter_packets_total",
            &["protocol=\"sflow\"", "source_id=\"3\""],
        ) == datagrams
            && c.metric("flowstage_exporter_flows_total", &[]) == sent.2
    });
    assert_eq!(c.metric("flowstage_exporter_decode_errors_total", &[]), 0);
    assert_eq!(c.metric("flowstage_exporter_lost_flows_total", &[]), 0);
    assert_eq!(c.metric("flowstage_exporter_bytes_total", &[]), sent.0);
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");

    let v = report(&url, "total", &[]);
    assert_eq!(totals(&v), (sent.0, sent.1, sent.2), "report totals");
    let ports = report_rows(&report(&url, "dst-port", &[]));
    assert_eq!(
        ports.keys().collect::<Vec<_>>(),
        ["443", "444", "445", "446", "447"]
    );
    let ases = report_rows(&report(&url, "dst-as", &[]));
    assert_eq!(ases.keys().collect::<Vec<_>>(), ["64503"]);

    let rows = pg.psql(
        &db,
        "SELECT ifindex, source, secs, in_octets, out_octets, in_packets, out_packets, in_errors, out_errors, oper_status
         FROM interface_counters WHERE ifindex = 5 ORDER BY time",
    );
    assert_eq!(
        rows,
        [
            "5|sflow|30|3000000|300000|4294967096||0|0|1",
            "5|sflow|30|5000000|100000|500||0|0|1",
            "5|sflow|30|37500|10000|10||0|0|1",
        ]
        .join("\n"),
        "deltas: the first sample and the reset give none; the packet counter wraps"
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT string_agg(in_octets::text, ' ' ORDER BY time) FROM interface_counters WHERE ifindex = 6"
        ),
        "30000000 30000000"
    );
    let interface = pg.psql(
        &db,
        "SELECT host(e.address), i.ifindex, i.measured_speed_bps, i.speed_bps, i.oper_status
         FROM interfaces i JOIN exporters e ON e.id = i.exporter_id WHERE i.ifindex = 5",
    );
    assert_eq!(interface, "127.0.0.71|5|10000000000|10000000000|1");
}

/// The real agents' captures, replayed to the sFlow port: report totals equal the sum
/// of frame length times sampling rate that tshark showed (see `captures`).
#[test]
fn captures_replayed_to_the_sflow_port() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/captures");
    if !dir.is_dir() {
        eprintln!("skipping: capture directory {} not found", dir.display());
        return;
    }
    // (file, samples, sum of frame_length * rate, sum of rate), from tshark.
    let files = [
        ("data-1140.pcap", 5, (1518 * 3 + 439 + 64) * 1024, 5 * 1024),
        ("data-icmpv4.pcap", 1, 102, 1),
        ("data-sflow-raw-ipv4.pcap", 2, 100, 2),
        ("data-sflow-expanded-sample.pcap", 1, 126_000, 1000),
    ];
    let pg = Pg::shared();
    let (_, url) = pg.create_database("sflow_captures");
    let data = support::data_dir("sflow-captures");
    let c = Collector::start(&url, data.path(), &[]);
    let agent = UdpSocket::bind("127.0.0.72:0").unwrap();
    let mut expected = (0u64, 0u64, 0u64);
    for (file, samples, bytes, packets) in files {
        let pcap = std::fs::read(dir.join(file)).unwrap();
        for (_, d) in support::pcap::udp_datagrams(&pcap).unwrap() {
            agent.send_to(&d.payload, c.sflow_target()).unwrap();
        }
        expected = (
            expected.0 + bytes,
            expected.1 + packets,
            expected.2 + samples,
        );
    }
    c.wait_for("the captures decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == expected.2
    });
    assert_eq!(c.metric("flowstage_exporter_decode_errors_total", &[]), 0);
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(totals(&report(&url, "total", &[])), expected);
}

/// The malformed corpus: (error kind, protocol label, datagram). Each yields exactly one
/// error and no flow record.
fn corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let header = |count: u32| {
        let mut b = encode(&Datagram {
            agent: Some(ip("10.0.0.9")),
            sub_agent_id: 1,
            sequence: 1,
            uptime_ms: 1,
            samples: vec![],
        });
        let n = b.len();
        b[n - 4..].copy_from_slice(&count.to_be_bytes());
        b
    };
    let with = |samples: &[(u32, Vec<u8>)]| {
        let mut b = header(samples.len() as u32);
        for (format, body) in samples {
            b.extend_from_slice(&format.to_be_bytes());
            b.extend_from_slice(&(body.len() as u32).to_be_bytes());
            b.extend_from_slice(body);
        }
        b
    };
    let words = |w: &[u32]| w.iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
    // A compact flow sample's fields, then `rest` (record count and records).
    let flow_sample = |rest: &[u32]| {
        let mut w = vec![1, 1, 100, 100, 0, 1, 2];
        w.extend_from_slice(rest);
        words(&w)
    };
    let mut bad_address = header(0);
    bad_address[7] = 9;
    let mut version4 = header(0);
    version4[3] = 4;
    let mut sample_length = header(1);
    sample_length.extend_from_slice(&words(&[1, 0xffff_fff0, 0]));
    vec![
        ("truncated_header", "sflow", header(0)[..20].to_vec()),
        ("sflow_address_type", "sflow", bad_address),
        ("unknown_version", "unknown", version4),
        ("sflow_sample_count", "sflow", header(4_000_000_000)),
        ("sflow_sample_length", "sflow", sample_length),
        (
            "sflow_sample_short",
            "sflow",
            with(&[(1, words(&[1, 2, 3]))]),
        ),
        (
            "sflow_record_count",
            "sflow",
            with(&[(1, flow_sample(&[u32::MAX]))]),
        ),
        (
            "sflow_record_length",
            "sflow",
            with(&[(1, flow_sample(&[1, 1, 0x7fff_ffff]))]),
        ),
        (
            // A raw header whose opaque header claims 1000 bytes in a 16-byte record.
            "sflow_record_short",
            "sflow",
            with(&[(1, flow_sample(&[1, 1, 16, 1, 64, 0, 1000]))]),
        ),
        (
            "sflow_record_short",
            "sflow",
            with(&[(2, words(&[1, 5, 1, 1, 8, 5, 6]))]),
        ),
    ]
}

#[test]
fn malformed_sflow_is_counted_and_valid_traffic_is_exact() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("sflow_malformed");
    let dir = support::data_dir("sflow-malformed");
    let c = Collector::start(&url, dir.path(), &[]);
    let agent = UdpSocket::bind("127.0.0.73:0").unwrap();
    let mut sent = Sent::default();
    send_flows(&agent, c.sflow_target(), 100, &mut sent);
    let corpus = corpus();
    for (_, _, d) in &corpus {
        agent.send_to(d, c.sflow_target()).unwrap();
    }
    // Bit flips and truncations of a valid datagram from another agent: whatever they
    // decode to, the collector keeps going.
    let noisy = UdpSocket::bind("127.0.0.74:0").unwrap();
    let valid = encode(&Datagram {
        agent: Some(ip("10.0.0.2")),
        sub_agent_id: 0,
        sequence: 1,
        uptime_ms: 1,
        samples: vec![flow(1, 10, 1500, 80, 1), counters(1, 10, 10, 1)],
    });
    let mut noise = 0u64;
    for i in (0..valid.len() * 8).step_by(3) {
        let mut b = valid.clone();
        b[i / 8] ^= 1 << (i % 8);
        noisy.send_to(&b, c.sflow_target()).unwrap();
        noise += 1;
    }
    for n in 0..valid.len() {
        noisy.send_to(&valid[..n], c.sflow_target()).unwrap();
        noise += 1;
        if n % 64 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    send_flows(&agent, c.sflow_target(), 100, &mut sent);
    c.wait_for("valid samples decoded and the corpus counted", |c| {
        c.metric(
            "flowstage_exporter_flows_total",
            &["exporter=\"127.0.0.73\""],
        ) == sent.2
            && c.metric(
                "flowstage_exporter_decode_errors_total",
                &["exporter=\"127.0.0.73\""],
            ) == corpus.len() as u64
            && c.metric(
                "flowstage_exporter_packets_total",
                &["exporter=\"127.0.0.74\""],
            ) == noise
    });
    let metrics = c.metrics();
    support::assert_errors_by_kind(
        &metrics,
        "127.0.0.73",
        corpus.iter().map(|(k, p, _)| (*k, *p)),
    );
    assert!(
        support::metric_sum(
            &metrics,
            "flowstage_exporter_decode_errors_total",
            &["exporter=\"127.0.0.74\""]
        ) > 0,
        "the noise has errors"
    );
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let v = report(&url, "total", &["--exporter", "127.0.0.73"]);
    assert_eq!(totals(&v), (sent.0, sent.1, sent.2));
}

/// `flowstage-collector gen --protocol sflow`: the generator's traffic model as flow
/// samples (IPv4 and IPv6, 1 in 100), through the collector: every report kind equals
/// what the generator counted.
#[test]
fn generated_sflow_is_exact_in_every_report() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("sflow_gen");
    let dir = support::data_dir("sflow-gen");
    let c = Collector::start(&url, dir.path(), &[]);
    let mut want = Vec::new();
    for (seed, ipv6, first_source) in [(21, false, 80), (22, true, 90)] {
        let opts = flowstage::gen::GenOptions {
            seed,
            ipv6,
            flows: 6_000,
            rate: Some(100_000),
            exporters: 2,
            first_source,
            sampling: 0x4064,
            ..flowstage::gen::GenOptions::new(
                flowstage::encode::EncodeProtocol::Sflow,
                c.sflow_target(),
            )
        };
        want.push(flowstage::gen::run(&opts, |_| {}).unwrap());
    }
    let flows: u64 = want.iter().map(|e| e.total.flows).sum();
    c.wait_for("every sample decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == flows
    });
    assert_eq!(c.metric("flowstage_exporter_decode_errors_total", &[]), 0);
    assert_eq!(c.metric("flowstage_exporter_lost_flows_total", &[]), 0);
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");
    for by in [
        "exporter",
        "interface",
        "dst-port",
        "proto",
        "src-as",
        "dst-as",
    ] {
        let mut expected: std::collections::BTreeMap<String, (u64, u64, u64)> =
            std::collections::BTreeMap::new();
        for e in &want {
            for (k, (b, p, f)) in support::expected_rows(e, by) {
                let x = expected.entry(k).or_default();
                x.0 += b;
                x.1 += p;
                x.2 += f;
            }
        }
        assert_eq!(
            report_rows(&report(&url, by, &[])),
            expected,
            "rows of {by}"
        );
    }
    let total = want.iter().fold((0, 0, 0), |a, e| {
        (
            a.0 + e.total.bytes,
            a.1 + e.total.packets,
            a.2 + e.total.flows,
        )
    });
    assert_eq!(totals(&report(&url, "total", &[])), total);
    // Sampled 1 in 100: every packet stands for 100.
    assert_eq!(total.1, total.2 * 100);
}
