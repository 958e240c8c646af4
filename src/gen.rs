//! Deterministic traffic generator: synthesises flows from a seed, exports them as
//! NetFlow v5, v9 or IPFIX from one or more loopback source addresses, and records the
//! exact totals a collector must end up with.
//!
//! The random source is a SplitMix64 written here rather than a crate so that the same
//! seed yields the same traffic forever, whatever a dependency does to its algorithms.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::decode::FlowRecord;
use crate::encode::{encode_v5, records_per_datagram, EncodeProtocol, TemplateExporter, V5Header};
pub use crate::totals::Totals;

/// SplitMix64: tiny, fast, and stable by construction.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Destination ports the generator draws from: few enough that every one stays within a
/// bucket's top N, so per-port totals can be compared exactly.
pub const DST_PORTS: [u16; 24] = [
    80, 443, 53, 22, 25, 123, 161, 389, 445, 993, 995, 1194, 1433, 3306, 3389, 5060, 5432, 6443,
    8080, 8443, 9000, 9200, 27017, 51820,
];
const PROTOS: [u8; 6] = [6, 6, 6, 17, 17, 1];

#[derive(Debug, Clone)]
pub struct TrafficModel {
    pub ipv6: bool,
    /// v5 carries 16-bit AS numbers only.
    pub wide_as: bool,
    pub interfaces: u32,
    pub as_count: u32,
}

impl TrafficModel {
    /// One synthetic flow ending at `end_ms`.
    pub fn flow(&self, rng: &mut SplitMix64, end_ms: i64) -> FlowRecord {
        let proto = PROTOS[rng.below(PROTOS.len() as u64) as usize];
        let packets = 1 + rng.below(999);
        let bytes = packets * (40 + rng.below(1460));
        let (src_addr, dst_addr) = if self.ipv6 {
            (
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    rng.below(256) as u16,
                    0,
                    0,
                    0,
                    1 + rng.below(4000) as u16,
                )),
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    1,
                    rng.below(256) as u16,
                    0,
                    0,
                    0,
                    1 + rng.below(4000) as u16,
                )),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | rng.below(1 << 20) as u32)),
                IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | rng.below(1 << 16) as u32)),
            )
        };
        let as_base: u32 = if self.wide_as { 4_200_000_000 } else { 64_512 };
        let src_as = as_base + rng.below(u64::from(self.as_count)) as u32;
        let dst_as = as_base + rng.below(u64::from(self.as_count)) as u32;
        let input_if = 1 + rng.below(u64::from(self.interfaces)) as u32;
        let output_if = 1
            + (input_if + rng.below(u64::from(self.interfaces - 1).max(1)) as u32)
                % self.interfaces;
        let (src_port, dst_port) = if proto == 1 {
            (0, 0x0800)
        } else {
            (
                1024 + rng.below(64_000) as u16,
                DST_PORTS[rng.below(DST_PORTS.len() as u64) as usize],
            )
        };
        let duration = rng.below(30_000) as i64;
        FlowRecord {
            src_addr,
            dst_addr,
            next_hop: Some(if self.ipv6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1))
            } else {
                IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1))
            }),
            src_port,
            dst_port,
            proto,
            tos: (rng.below(4) as u8) << 2,
            tcp_flags: if proto == 6 { 0x1b } else { 0 },
            src_mask: 24,
            dst_mask: 16,
            input_if,
            output_if,
            src_as,
            dst_as,
            bytes,
            packets,
            start_ms: end_ms - duration,
            end_ms,
            ..FlowRecord::default()
        }
    }
}

/// What the generator sent, keyed like `flowstage-collector report --by KEY` (input
/// direction).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub protocol: String,
    pub datagrams: u64,
    pub total: Totals,
    pub by: BTreeMap<String, BTreeMap<String, Totals>>,
}

/// The report keys the generator keeps totals for, in `--by` spelling.
const TALLY_KINDS: [&str; 6] = [
    "exporter",
    "interface",
    "dst-port",
    "proto",
    "src-as",
    "dst-as",
];

/// Per-flow counting with numeric keys; strings are made once at the end.
#[derive(Debug, Default)]
struct Tally {
    total: Totals,
    by: rustc_hash::FxHashMap<(u8, IpAddr, u32), Totals>,
}

impl Tally {
    fn count(&mut self, exporter: IpAddr, r: &FlowRecord) {
        let (b, p) = (r.scaled_bytes(), r.scaled_packets());
        self.total.add(b, p, r.flows);
        let none = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let keys = [
            (exporter, 0),
            (exporter, r.input_if),
            (none, u32::from(r.dst_port)),
            (none, u32::from(r.proto)),
            (none, r.src_as),
            (none, r.dst_as),
        ];
        for (kind, (addr, key)) in keys.into_iter().enumerate() {
            self.by
                .entry((kind as u8, addr, key))
                .or_default()
                .add(b, p, r.flows);
        }
    }

    fn into_expected(self, expected: &mut Expected) {
        expected.total = self.total;
        for ((kind, addr, key), t) in self.by {
            let name = TALLY_KINDS[usize::from(kind)];
            let key = match name {
                "exporter" => addr.to_string(),
                "interface" => format!("{addr}:{key}"),
                _ => key.to_string(),
            };
            expected
                .by
                .entry(name.to_string())
                .or_default()
                .insert(key, t);
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub protocol: EncodeProtocol,
    pub ipv6: bool,
    pub seed: u64,
    pub flows: u64,
    /// Flows per second; `None` sends as fast as possible.
    pub rate: Option<u64>,
    pub exporters: u8,
    /// Exporters send from 127.0.0.<first_source + i>.
    pub first_source: u8,
    pub target: SocketAddr,
    /// v5 header sampling interval (1 = unsampled).
    pub sampling: u16,
    /// Flow end times are spread over this many seconds before now minus `age_secs`.
    pub spread_secs: u64,
    /// How long ago the newest flows ended.
    pub age_secs: u64,
}

impl GenOptions {
    /// The `gen` command's defaults: 10 000 IPv4 flows, seed 1, one exporter at
    /// 127.0.0.10, unsampled, unpaced, ending over the last 30 s.
    pub fn new(protocol: EncodeProtocol, target: SocketAddr) -> Self {
        GenOptions {
            protocol,
            ipv6: false,
            seed: 1,
            flows: 10_000,
            rate: None,
            exporters: 1,
            first_source: 10,
            target,
            sampling: 0,
            spread_secs: 30,
            age_secs: 1,
        }
    }
}

/// Send the traffic and return what was sent. Stops by itself after `flows` flows.
pub fn run(opts: &GenOptions, mut progress: impl FnMut(u64)) -> anyhow::Result<Expected> {
    anyhow::ensure!(opts.exporters > 0, "--exporters must be at least 1");
    anyhow::ensure!(
        opts.target.ip().is_loopback(),
        "the generator only sends to loopback addresses, not {}",
        opts.target
    );
    let ipv6_target = opts.target.is_ipv6();
    let mut sockets = Vec::new();
    for i in 0..opts.exporters {
        let source: SocketAddr = if ipv6_target {
            anyhow::ensure!(
                opts.exporters == 1,
                "an IPv6 target allows one exporter (::1)"
            );
            (Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (
                Ipv4Addr::new(127, 0, 0, opts.first_source.wrapping_add(i)),
                0,
            )
                .into()
        };
        let s =
            UdpSocket::bind(source).with_context(|| format!("binding exporter socket {source}"))?;
        let _ = socket2::SockRef::from(&s).set_send_buffer_size(4 << 20);
        sockets.push(s);
    }
    let exporter_ips: Vec<IpAddr> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.ip()))
        .collect::<Result<_, _>>()?;
    let model = TrafficModel {
        ipv6: opts.ipv6,
        wide_as: opts.protocol != EncodeProtocol::V5,
        interfaces: 4,
        as_count: 50,
    };
    let mut rng = SplitMix64::new(opts.seed);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let boot_ms = now_ms - 3_600_000;
    let mut exporters: Vec<TemplateExporter> = (0..opts.exporters)
        .map(|i| TemplateExporter::new(opts.protocol, opts.ipv6, u32::from(i) + 1, boot_ms))
        .collect();
    let mut v5_sequence = vec![0u32; usize::from(opts.exporters)];
    let mut sflow_sequence = vec![0u32; usize::from(opts.exporters)];
    let mut expected = Expected {
        protocol: match (opts.protocol, opts.ipv6) {
            (EncodeProtocol::V5, _) => "v5",
            (EncodeProtocol::V9, false) => "v9",
            (EncodeProtocol::V9, true) => "v9-ipv6",
            (EncodeProtocol::Ipfix, false) => "ipfix",
            (EncodeProtocol::Ipfix, true) => "ipfix-ipv6",
            (EncodeProtocol::Sflow, false) => "sflow",
            (EncodeProtocol::Sflow, true) => "sflow-ipv6",
        }
        .to_string(),
        ..Default::default()
    };
    let per = records_per_datagram(opts.protocol, opts.ipv6) as u64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut datagram_index = 0u64;
    let mut batch = Vec::with_capacity(per as usize);
    let mut tally = Tally::default();
    while sent < opts.flows {
        let n = per.min(opts.flows - sent);
        let e = (datagram_index % u64::from(opts.exporters)) as usize;
        let exporter_ip = exporter_ips[e];
        let wall_ms = chrono::Utc::now().timestamp_millis();
        batch.clear();
        for _ in 0..n {
            let end = wall_ms
                - (opts.age_secs as i64 * 1000).max(1000)
                - rng.below(opts.spread_secs.max(1) * 1000) as i64;
            let mut r = model.flow(&mut rng, end);
            match opts.protocol {
                EncodeProtocol::V5 => {
                    r.sampling_rate = crate::decode::v5_sampling_rate(opts.sampling);
                }
                EncodeProtocol::Sflow => {
                    as_sflow_sample(&mut r, crate::decode::v5_sampling_rate(opts.sampling));
                }
                _ => {}
            }
            tally.count(exporter_ip, &r);
            batch.push(r);
        }
        let datagram = match opts.protocol {
            EncodeProtocol::V5 => {
                let h = V5Header {
                    sys_uptime_ms: (wall_ms - boot_ms) as u32,
                    unix_ms: wall_ms,
                    flow_sequence: v5_sequence[e],
                    engine_type: 0,
                    engine_id: e as u8,
                    sampling_interval: opts.sampling,
                };
                v5_sequence[e] = v5_sequence[e].wrapping_add(n as u32);
                encode_v5(&h, &batch)
            }
            EncodeProtocol::Sflow => {
                sflow_sequence[e] = sflow_sequence[e].wrapping_add(1);
                sflow_datagram(
                    exporter_ip,
                    sflow_sequence[e],
                    (wall_ms - boot_ms) as u32,
                    &batch,
                )
            }
            _ => {
                let x = &mut exporters[e];
                let with_template = datagram_index / u64::from(opts.exporters) % 16 == 0;
                x.datagram(wall_ms, &batch, with_template)
            }
        };
        send_retrying(&sockets[e], &datagram, opts.target)?;
        sent += n;
        datagram_index += 1;
        expected.datagrams += 1;
        if datagram_index % 256 == 0 {
            progress(sent);
        }
        if let Some(rate) = opts.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    progress(sent);
    tally.into_expected(&mut expected);
    Ok(expected)
}

/// A flow as an sFlow agent sees it: one sampled packet of it (its average size), one
/// flow, the sampling rate applied by the collector; ICMP carries a type, not ports.
fn as_sflow_sample(r: &mut FlowRecord, rate: u32) {
    r.bytes = (r.bytes / r.packets.max(1)).clamp(64, 9000);
    r.packets = 1;
    r.flows = 1;
    r.sampling_rate = rate.max(1);
    if r.proto == 1 {
        r.src_port = 0;
        r.dst_port = 0;
    }
}

/// One sFlow datagram of flow samples: the packet header (Ethernet, IP, transport),
/// the router's masks and next hop, and the gateway's ASes.
fn sflow_datagram(agent: IpAddr, sequence: u32, uptime_ms: u32, flows: &[FlowRecord]) -> Vec<u8> {
    use crate::encode::sflow::{
        encode, packet_header, Datagram, FlowData, Interface, PacketSpec, Sample,
    };
    let samples = flows
        .iter()
        .enumerate()
        .map(|(i, r)| Sample::Flow {
            expanded: false,
            sequence: sequence.wrapping_mul(16).wrapping_add(i as u32),
            source_id: 1,
            sampling_rate: r.sampling_rate,
            sample_pool: 0,
            drops: 0,
            input: Interface::index(r.input_if),
            output: Interface::index(r.output_if),
            records: vec![
                FlowData::RawHeader {
                    protocol: 1,
                    frame_length: r.bytes as u32,
                    stripped: 4,
                    header: packet_header(&PacketSpec {
                        vlan: None,
                        src: r.src_addr,
                        dst: r.dst_addr,
                        proto: r.proto,
                        tos: r.tos,
                        src_port: r.src_port,
                        dst_port: r.dst_port,
                        tcp_flags: r.tcp_flags,
                        icmp: (8, 0),
                    }),
                },
                FlowData::Router {
                    next_hop: r.next_hop,
                    src_mask: u32::from(r.src_mask),
                    dst_mask: u32::from(r.dst_mask),
                },
                FlowData::Gateway {
                    next_hop: r.next_hop,
                    my_as: 0,
                    src_as: r.src_as,
                    src_peer_as: 0,
                    path: vec![(2, vec![r.dst_as])],
                    communities: Vec::new(),
                    local_pref: 0,
                },
            ],
        })
        .collect();
    encode(&Datagram {
        agent: Some(agent),
        sub_agent_id: 0,
        sequence,
        uptime_ms,
        samples,
    })
}

/// The kernel refuses a send when its buffer is full (ENOBUFS); wait and retry, so that
/// what the totals say was sent really left.
fn send_retrying(socket: &UdpSocket, datagram: &[u8], target: SocketAddr) -> anyhow::Result<()> {
    loop {
        match socket.send_to(datagram, target) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e).with_context(|| format!("sending to {target}")),
        }
    }
}
