//! A real exporter and a real peer collector: softflowd reads a pcap this test writes
//! and exports NetFlow v5, v9 and IPFIX to nfcapd, which repeats every datagram to our
//! collector. nfdump's view of nfcapd's files, our `report`, and the pcap itself must
//! agree on the totals.
#![allow(clippy::unwrap_used)]

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowstage::gen::SplitMix64;
use support::{report, report_rows, totals, Collector, Pg};

const DST_PORTS: [u16; 6] = [80, 443, 53, 123, 8443, 5432];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// IPv4/IPv6 header checksum is not checked by softflowd, so it is left 0.
fn packet(rng: &mut SplitMix64, flow: u64, ipv6: bool) -> (Vec<u8>, u8, u16, u64) {
    let proto = [6u8, 6, 17, 17, 1][(flow % 5) as usize];
    let dst_port = DST_PORTS[(flow % DST_PORTS.len() as u64) as usize];
    let src_port = 20_000 + flow as u16;
    let payload = rng.below(1200) as usize;
    let l4: Vec<u8> = match proto {
        6 => {
            let mut h = Vec::new();
            h.extend_from_slice(&src_port.to_be_bytes());
            h.extend_from_slice(&dst_port.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0x20, 0, 0, 0, 0, 0]);
            h.resize(20 + payload, 0);
            h
        }
        17 => {
            let mut h = Vec::new();
            h.extend_from_slice(&src_port.to_be_bytes());
            h.extend_from_slice(&dst_port.to_be_bytes());
            h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.resize(8 + payload, 0);
            h
        }
        _ => {
            let icmp_type = if ipv6 { 128 } else { 8 };
            let mut h = vec![icmp_type, 0, 0, 0, 0, 1, 0, 1];
            h.resize(8 + payload, 0);
            h
        }
    };
    let mut frame = vec![
        0, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0x66, 0x77, 0x88, 0x99, 0xaa,
    ];
    let ip_len;
    if ipv6 {
        frame.extend_from_slice(&[0x86, 0xdd]);
        let next = if proto == 1 { 58 } else { proto };
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[next, 64]);
        frame.extend_from_slice(&[
            0x20,
            0x01,
            0x0d,
            0xb8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            (flow % 7) as u8 + 1,
        ]);
        frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip_len = 40 + l4.len();
    } else {
        frame.extend_from_slice(&[0x08, 0x00]);
        ip_len = 20 + l4.len();
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
        frame.extend_from_slice(&[10, 0, (flow / 200) as u8, (flow % 200) as u8 + 1]);
        frame.extend_from_slice(&[192, 168, 1, (flow % 13) as u8 + 1]);
    }
    frame.extend_from_slice(&l4);
    let proto = if ipv6 && proto == 1 { 58 } else { proto };
    (frame, proto, dst_port, ip_len as u64)
}

/// Expected totals straight from the pcap: (bytes, packets) per (proto, dst port).
type PcapTotals = BTreeMap<(u8, u16), (u64, u64)>;

fn write_pcap(path: &Path, with_ipv6: bool) -> PcapTotals {
    let mut rng = SplitMix64::new(99);
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes()).unwrap();
    f.write_all(&[
        2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ])
    .unwrap();
    let start = chrono::Utc::now().timestamp_micros() - 20_000_000;
    let mut expected = PcapTotals::new();
    for i in 0..4000u64 {
        let flow = rng.below(300);
        let ipv6 = with_ipv6 && flow % 4 == 0;
        let (frame, proto, port, ip_len) = packet(&mut rng, flow, ipv6);
        let ts = start + i as i64 * 2_000;
        f.write_all(&((ts / 1_000_000) as u32).to_le_bytes())
            .unwrap();
        f.write_all(&((ts % 1_000_000) as u32).to_le_bytes())
            .unwrap();
        f.write_all(&(frame.len() as u32).to_le_bytes()).unwrap();
        f.write_all(&(frame.len() as u32).to_le_bytes()).unwrap();
        f.write_all(&frame).unwrap();
        let key = (proto, if proto == 6 || proto == 17 { port } else { 0 });
        let e = expected.entry(key).or_default();
        e.0 += ip_len;
        e.1 += 1;
    }
    expected
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn terminate(mut child: Reaped) {
    support::sigterm_and_wait(&mut child.0);
}

fn proto_number(name: &str) -> u8 {
    match name.trim() {
        "TCP" => 6,
        "UDP" => 17,
        "ICMP" => 1,
        "ICMP6" => 58,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("protocol {other:?} in nfdump output")),
    }
}

/// nfdump's flows: per (proto, dst port for TCP/UDP) -> (bytes, packets, flows).
fn nfdump_totals(dir: &Path) -> BTreeMap<(u8, u16), (u64, u64, u64)> {
    let out = Command::new("nfdump")
        .arg("-R")
        .arg(dir)
        .args(["-q", "-o", "csv"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() < 13 {
            continue;
        }
        let proto = proto_number(cols[7]);
        let port = if proto == 6 || proto == 17 {
            cols[6].trim().parse().unwrap()
        } else {
            0
        };
        let e: &mut (u64, u64, u64) = m.entry((proto, port)).or_default();
        e.0 += cols[12].trim().parse::<u64>().unwrap();
        e.1 += cols[11].trim().parse::<u64>().unwrap();
        e.2 += 1;
    }
    m
}

fn run_softflowd(dir: &Path, pcap: &Path, version: &str, target_port: u16) {
    let ctl = dir.join("softflowd.ctl");
    let mut cmd = Command::new("softflowd");
    cmd.arg("-r").arg(pcap).args([
        "-n",
        &format!("127.0.0.1:{target_port}"),
        "-v",
        version,
        "-d",
    ]);
    cmd.arg("-p")
        .arg(dir.join("softflowd.pid"))
        .arg("-c")
        .arg(&ctl);
    if version != "5" {
        cmd.arg("-6");
    }
    let mut child = Reaped(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // In -r mode softflowd keeps its flows until told to shut down; wait until it has
    // read the whole file, then ask it to export everything and exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = Command::new("softflowctl")
            .arg("-c")
            .arg(&ctl)
            .arg("statistics")
            .output();
        if stats
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Packets processed: 4000"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "softflowd did not read the pcap");
        std::thread::sleep(Duration::from_millis(100));
    }
    // softflowd may already be on its way out once the file is read; either way it
    // exports everything before it exits.
    let _ = Command::new("softflowctl")
        .arg("-c")
        .arg(&ctl)
        .arg("shutdown")
        .output();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "softflowd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn softflowd_to_nfcapd_and_us(name: &str, version: &str) {
    for tool in ["softflowd", "softflowctl", "nfcapd", "nfdump"] {
        if !have(tool) {
            panic!("{tool} not found: apt-get install softflowd nfdump (scripts/test.sh does)");
        }
    }
    let pg = Pg::shared();
    let (_, url) = pg.create_database(name);
    let dir = support::data_dir(name);
    let nfcapd_dir = dir.path().join("nfcapd");
    std::fs::create_dir_all(&nfcapd_dir).unwrap();
    let pcap = dir.path().join("traffic.pcap");
    let from_pcap = write_pcap(&pcap, version != "5");

    let c = Collector::start(&url, &dir.path().join("collector"), &[]);
    let nfcapd_port = support::free_udp_port();
    let nfcapd = Reaped(
        Command::new("nfcapd")
            .arg("-w")
            .arg(&nfcapd_dir)
            .args(["-p", &nfcapd_port.to_string(), "-b", "127.0.0.1"])
            .args(["-R", &format!("127.0.0.1/{}", c.port)])
            .arg("-P")
            .arg(dir.path().join("nfcapd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    run_softflowd(dir.path(), &pcap, version, nfcapd_port);
    std::thread::sleep(Duration::from_millis(500));
    terminate(nfcapd);
    let theirs = nfdump_totals(&nfcapd_dir);
    let their_flows: u64 = theirs.values().map(|t| t.2).sum();
    assert!(their_flows > 100, "nfdump saw {their_flows} flows");
    c.wait_for("softflowd's flows decoded", |c| {
        c.metric("flowstage_exporter_flows_total", &[]) == their_flows
    });
    let (status, log) = c.terminate();
    assert!(status.success(), "{log}");

    // Totals: pcap == nfdump == us.
    let pcap_total = from_pcap
        .values()
        .fold((0, 0), |a, t| (a.0 + t.0, a.1 + t.1));
    let their_total = theirs
        .values()
        .fold((0, 0, 0), |a, t| (a.0 + t.0, a.1 + t.1, a.2 + t.2));
    assert_eq!(
        (their_total.0, their_total.1),
        pcap_total,
        "nfdump vs the pcap"
    );
    let v = report(&url, "total", &[]);
    assert_eq!(totals(&v), their_total, "our report vs nfdump");

    // Per protocol and per destination port (TCP/UDP).
    let rows = report_rows(&report(&url, "proto", &[]));
    let mut their_proto: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for ((proto, _), t) in &theirs {
        let e = their_proto.entry(proto.to_string()).or_default();
        *e = (e.0 + t.0, e.1 + t.1, e.2 + t.2);
    }
    assert_eq!(rows, their_proto, "--by proto vs nfdump");
    let rows = report_rows(&report(&url, "dst-port", &[]));
    for port in DST_PORTS {
        let theirs_port = theirs
            .iter()
            .filter(|((p, dp), _)| (*p == 6 || *p == 17) && *dp == port)
            .fold((0, 0, 0), |a, (_, t)| (a.0 + t.0, a.1 + t.1, a.2 + t.2));
        assert_eq!(
            rows.get(&port.to_string()).copied().unwrap_or_default(),
            theirs_port,
            "dst port {port}"
        );
    }
}

#[test]
fn softflowd_netflow_v5() {
    softflowd_to_nfcapd_and_us("peer_v5", "5");
}

#[test]
fn softflowd_netflow_v9() {
    softflowd_to_nfcapd_and_us("peer_v9", "9");
}

#[test]
fn softflowd_ipfix() {
    softflowd_to_nfcapd_and_us("peer_ipfix", "10");
}
