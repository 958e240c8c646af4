//! sFlow against an independent collector: pmacct's `sfacctd` and our collector receive
//! the same datagrams (flow samples at several sampling rates, IPv4 and IPv6, TCP, UDP
//! and ICMP, with counter samples mixed in), and both must report the totals the test
//! built them from, per protocol and destination port, after sampling is applied.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowstage::encode::sflow::{
    encode, packet_header, CounterData, Datagram, FlowData, Interface, PacketSpec, Sample,
};
use flowstage::gen::SplitMix64;

use crate::support::{self, report, report_rows, totals, Collector, Pg};

const SFACCTD: &str = "/usr/sbin/sfacctd";

type Totals = BTreeMap<(u8, u16), (u64, u64)>;

/// The datagrams and what they stand for: (proto, dst port) -> (bytes, packets), scaled.
fn traffic(seed: u64, datagrams: u32) -> (Vec<Vec<u8>>, Totals, u64) {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    let mut expected = Totals::new();
    let mut samples = 0;
    for seq in 0..datagrams {
        let mut s = Vec::new();
        for i in 0..(1 + rng.below(8) as u32) {
            let proto = [6u8, 17, 1, 6, 17][rng.below(5) as usize];
            let v6 = rng.below(4) == 0;
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                (
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 + rng.below(50) as u16).into(),
                    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1 + rng.below(50) as u16).into(),
                )
            } else {
                (
                    Ipv4Addr::new(10, 0, 0, 1 + rng.below(50) as u8).into(),
                    Ipv4Addr::new(192, 0, 2, 1 + rng.below(50) as u8).into(),
                )
            };
            let dst_port = if proto == 1 {
                0
            } else {
                [80u16, 443, 53, 123][rng.below(4) as usize]
            };
            let rate = [1u32, 100, 512, 2048][rng.below(4) as usize];
            let frame_length = 64 + rng.below(1400) as u32;
            let header = packet_header(&PacketSpec {
                vlan: None,
                src,
                dst,
                proto: if proto == 1 && v6 { 58 } else { proto },
                tos: 0,
                src_port: 1024 + rng.below(60000) as u16,
                dst_port,
                tcp_flags: 0x18,
                icmp: (8, 0),
            });
            let key = (if proto == 1 && v6 { 58 } else { proto }, dst_port);
            let e = expected.entry(key).or_default();
            e.0 += u64::from(frame_length) * u64::from(rate);
            e.1 += u64::from(rate);
            samples += 1;
            s.push(Sample::Flow {
                expanded: i % 2 == 1,
                sequence: seq * 10 + i,
                source_id: 3,
                sampling_rate: rate,
                sample_pool: 0,
                drops: 0,
                input: Interface::index(3),
                output: Interface::index(7),
                records: vec![FlowData::RawHeader {
                    protocol: 1,
                    frame_length,
                    stripped: 4,
                    header,
                }],
            });
        }
        if seq % 10 == 0 {
            s.push(Sample::Counters {
                expanded: false,
                sequence: seq,
                source_id: 3,
                records: vec![CounterData::Interface(
                    flowstage::decode::InterfaceCounters {
                        ifindex: 3,
                        speed_bps: 1_000_000_000,
                        in_octets: u64::from(seq) * 1_000_000,
                        out_octets: u64::from(seq) * 500_000,
                        ..Default::default()
                    },
                )],
            });
        }
        out.push(encode(&Datagram {
            agent: Some(Ipv4Addr::new(127, 0, 0, 61).into()),
            sub_agent_id: 0,
            sequence: seq + 1,
            uptime_ms: 1000 + seq * 10,
            samples: s,
        }));
    }
    (out, expected, samples)
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // sfacctd's plugins are processes of their own: stop them too.
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start sfacctd on a loopback port, aggregating by protocol and destination port into
/// a CSV file, renormalising by the sampling rate.
fn start_sfacctd(dir: &Path) -> (Reaped, u16) {
    let port = support::free_udp_port();
    let config = dir.join("sfacctd.conf");
    std::fs::write(
        &config,
        format!(
            "daemonize: false\n\
             sfacctd_ip: 127.0.0.1\n\
             sfacctd_port: {port}\n\
             sfacctd_renormalize: true\n\
             plugins: print[p]\n\
             aggregate[p]: proto, dst_port\n\
             print_output[p]: csv\n\
             print_output_file[p]: {}\n\
             print_refresh_time[p]: 1\n\
             print_output_file_append[p]: true\n\
             logfile: {}\n",
            dir.join("out.csv").display(),
            dir.join("sfacctd.log").display()
        ),
    )
    .unwrap();
    let child = Command::new(SFACCTD)
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Ready when its log says it listens (it has no other signal).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(dir.join("sfacctd.log")).unwrap_or_default();
        if log.contains("waiting for sFlow data") || log.contains("Listening") {
            break;
        }
        assert!(Instant::now() < deadline, "sfacctd did not start: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Reaped(child), port)
}

/// sfacctd's CSV (header lines repeat per refresh): (proto, dst port) -> (bytes, packets).
fn sfacctd_totals(path: &Path) -> Totals {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Totals::new();
    let mut columns: Vec<String> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if line.starts_with("PROTOCOL") || line.contains("PACKETS") {
            columns = fields.iter().map(|f| f.trim().to_string()).collect();
            continue;
        }
        let col = |name: &str| columns.iter().position(|c| c == name);
        let (Some(p), Some(d), Some(b), Some(k)) = (
            col("PROTOCOL"),
            col("DST_PORT"),
            col("BYTES"),
            col("PACKETS"),
        ) else {
            continue;
        };
        let proto = match fields[p].trim() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "ipv6-icmp" | "icmp6" => 58,
            other => other.parse().unwrap_or(255),
        };
        let e = out
            .entry((proto, fields[d].trim().parse().unwrap_or(0)))
            .or_default();
        e.0 += fields[b].trim().parse::<u64>().unwrap();
        e.1 += fields[k].trim().parse::<u64>().unwrap();
    }
    out
}

#[test]
fn sfacctd_and_flowstage_agree_on_the_same_sflow() {
    if !Path::new(SFACCTD).exists() {
        eprintln!("skipped: {SFACCTD} is not installed (apt-get install pmacct)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (sfacctd, peer_port) = start_sfacctd(dir.path());
    let pg = Pg::shared();
    let (_, url) = pg.create_database("sflow_peer");
    let data = support::data_dir("sflow-peer");
    let c = Collector::start(&url, data.path(), &[]);
    let (datagrams, expected, samples) = traffic(77, 400);
    let sender = UdpSocket::bind("127.0.0.61:0").unwrap();
    for (i, d) in datagrams.iter().enumerate() {
        sender.send_to(d, c.sflow_target()).unwrap();
        sender.send_to(d, ("127.0.0.1", peer_port)).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    c.wait_for("every sample decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == samples
    });
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");

    // sfacctd writes its aggregates every second; wait until they hold every packet.
    let want_packets: u64 = expected.values().map(|v| v.1).sum();
    let csv = dir.path().join("out.csv");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut theirs = sfacctd_totals(&csv);
    while theirs.values().map(|v| v.1).sum::<u64>() < want_packets && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        theirs = sfacctd_totals(&csv);
    }
    drop(sfacctd);
    assert_eq!(theirs, expected, "sfacctd against the generated samples");

    // Ours: per protocol, and per destination port of TCP and UDP.
    let by_proto = report_rows(&report(&url, "proto", &[]));
    let by_port = report_rows(&report(&url, "dst-port", &[]));
    let mut want_proto: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut want_port: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for ((proto, port), (b, p)) in &expected {
        let e = want_proto.entry(proto.to_string()).or_default();
        e.0 += b;
        e.1 += p;
        if matches!(proto, 6 | 17) {
            let e = want_port.entry(port.to_string()).or_default();
            e.0 += b;
            e.1 += p;
        }
    }
    let strip = |m: &BTreeMap<String, (u64, u64, u64)>| -> BTreeMap<String, (u64, u64)> {
        m.iter().map(|(k, v)| (k.clone(), (v.0, v.1))).collect()
    };
    assert_eq!(
        strip(&by_proto),
        strip(&want_proto),
        "flowstage per protocol"
    );
    let ours_ports: BTreeMap<String, (u64, u64)> = strip(&by_port)
        .into_iter()
        .filter(|(k, _)| want_port.contains_key(k))
        .collect();
    assert_eq!(ours_ports, strip(&want_port), "flowstage per TCP/UDP port");
    let all = totals(&report(&url, "total", &[]));
    assert_eq!(all.2, samples, "one flow per sample");
}
