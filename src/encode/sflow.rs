//! An sFlow v5 encoder, the mirror image of the decoder: datagrams of flow and counter
//! samples built from plain values, for the tests (and anything else that needs to act
//! as an sFlow agent). It writes what it is given, right or wrong, so that tests can
//! also build malformed datagrams.

use std::net::IpAddr;

use crate::decode::InterfaceCounters;

/// One datagram.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// `None` writes address type 0 (unknown).
    pub agent: Option<IpAddr>,
    pub sub_agent_id: u32,
    pub sequence: u32,
    pub uptime_ms: u32,
    pub samples: Vec<Sample>,
}

/// An interface as a flow sample carries it.
#[derive(Debug, Clone, Copy)]
pub struct Interface {
    /// 0 single interface, 1 discarded, 2 several outputs.
    pub format: u32,
    pub value: u32,
}

impl Interface {
    pub fn index(value: u32) -> Self {
        Interface { format: 0, value }
    }
}

#[derive(Debug, Clone)]
pub enum Sample {
    Flow {
        /// Expanded (format 3) or compact (format 1).
        expanded: bool,
        sequence: u32,
        source_id: u32,
        sampling_rate: u32,
        sample_pool: u32,
        drops: u32,
        input: Interface,
        output: Interface,
        records: Vec<FlowData>,
    },
    Counters {
        expanded: bool,
        sequence: u32,
        source_id: u32,
        records: Vec<CounterData>,
    },
    /// Any other sample format, written as given.
    Other { format: u32, body: Vec<u8> },
}

#[derive(Debug, Clone)]
pub enum FlowData {
    RawHeader {
        /// 1 Ethernet, 11 IPv4, 12 IPv6.
        protocol: u32,
        frame_length: u32,
        stripped: u32,
        header: Vec<u8>,
    },
    SampledIp {
        length: u32,
        proto: u32,
        src: IpAddr,
        dst: IpAddr,
        src_port: u32,
        dst_port: u32,
        tcp_flags: u32,
        tos: u32,
    },
    Switch {
        src_vlan: u32,
        dst_vlan: u32,
    },
    Router {
        next_hop: Option<IpAddr>,
        src_mask: u32,
        dst_mask: u32,
    },
    Gateway {
        next_hop: Option<IpAddr>,
        my_as: u32,
        src_as: u32,
        src_peer_as: u32,
        /// (segment type, ASes)
        path: Vec<(u32, Vec<u32>)>,
        communities: Vec<u32>,
        local_pref: u32,
    },
    /// Any other record format (enterprise << 12 | format), written as given.
    Other {
        format: u32,
        body: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
pub enum CounterData {
    /// Generic interface counters; `source_id` and `uptime_ms` are not encoded here.
    Interface(InterfaceCounters),
    Other {
        format: u32,
        body: Vec<u8>,
    },
}

fn u32_(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn u64_(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn address(b: &mut Vec<u8>, a: Option<IpAddr>) {
    match a {
        None => u32_(b, 0),
        Some(IpAddr::V4(v4)) => {
            u32_(b, 1);
            b.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            u32_(b, 2);
            b.extend_from_slice(&v6.octets());
        }
    }
}

/// A sample's sequence number and source: one word (type << 24 | index) in the compact
/// formats, two in the expanded ones.
fn sample_start(b: &mut Vec<u8>, expanded: bool, sequence: u32, source_id: u32) {
    u32_(b, sequence);
    if expanded {
        u32_(b, source_id >> 24);
        u32_(b, source_id & 0x00ff_ffff);
    } else {
        u32_(b, source_id);
    }
}

/// `[format][length][body]`.
fn framed(b: &mut Vec<u8>, format: u32, body: &[u8]) {
    u32_(b, format);
    u32_(b, body.len() as u32);
    b.extend_from_slice(body);
}

pub fn encode(d: &Datagram) -> Vec<u8> {
    let mut b = Vec::with_capacity(1400);
    u32_(&mut b, 5);
    address(&mut b, d.agent);
    u32_(&mut b, d.sub_agent_id);
    u32_(&mut b, d.sequence);
    u32_(&mut b, d.uptime_ms);
    u32_(&mut b, d.samples.len() as u32);
    for s in &d.samples {
        let (format, body) = sample(s);
        framed(&mut b, format, &body);
    }
    b
}

fn sample(s: &Sample) -> (u32, Vec<u8>) {
    let mut b = Vec::new();
    match s {
        Sample::Flow {
            expanded,
            sequence,
            source_id,
            sampling_rate,
            sample_pool,
            drops,
            input,
            output,
            records,
        } => {
            sample_start(&mut b, *expanded, *sequence, *source_id);
            u32_(&mut b, *sampling_rate);
            u32_(&mut b, *sample_pool);
            u32_(&mut b, *drops);
            for i in [input, output] {
                if *expanded {
                    u32_(&mut b, i.format);
                    u32_(&mut b, i.value);
                } else {
                    u32_(&mut b, (i.format << 30) | (i.value & 0x3fff_ffff));
                }
            }
            u32_(&mut b, records.len() as u32);
            for r in records {
                let (format, body) = flow_data(r);
                framed(&mut b, format, &body);
            }
            (if *expanded { 3 } else { 1 }, b)
        }
        Sample::Counters {
            expanded,
            sequence,
            source_id,
            records,
        } => {
            sample_start(&mut b, *expanded, *sequence, *source_id);
            u32_(&mut b, records.len() as u32);
            for r in records {
                match r {
                    CounterData::Interface(c) => framed(&mut b, 1, &interface_counters(c)),
                    CounterData::Other { format, body } => framed(&mut b, *format, body),
                }
            }
            (if *expanded { 4 } else { 2 }, b)
        }
        Sample::Other { format, body } => (*format, body.clone()),
    }
}

fn flow_data(r: &FlowData) -> (u32, Vec<u8>) {
    let mut b = Vec::new();
    let format = match r {
        FlowData::RawHeader {
            protocol,
            frame_length,
            stripped,
            header,
        } => {
            u32_(&mut b, *protocol);
            u32_(&mut b, *frame_length);
            u32_(&mut b, *stripped);
            u32_(&mut b, header.len() as u32);
            b.extend_from_slice(header);
            b.resize(b.len() + (4 - header.len() % 4) % 4, 0);
            1
        }
        FlowData::SampledIp {
            length,
            proto,
            src,
            dst,
            src_port,
            dst_port,
            tcp_flags,
            tos,
        } => {
            u32_(&mut b, *length);
            u32_(&mut b, *proto);
            for a in [src, dst] {
                match a {
                    IpAddr::V4(v4) => b.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => b.extend_from_slice(&v6.octets()),
                }
            }
            for v in [src_port, dst_port, tcp_flags, tos] {
                u32_(&mut b, *v);
            }
            if src.is_ipv4() {
                3
            } else {
                4
            }
        }
        FlowData::Switch { src_vlan, dst_vlan } => {
            for v in [*src_vlan, 0, *dst_vlan, 0] {
                u32_(&mut b, v);
            }
            1001
        }
        FlowData::Router {
            next_hop,
            src_mask,
            dst_mask,
        } => {
            address(&mut b, *next_hop);
            u32_(&mut b, *src_mask);
            u32_(&mut b, *dst_mask);
            1002
        }
        FlowData::Gateway {
            next_hop,
            my_as,
            src_as,
            src_peer_as,
            path,
            communities,
            local_pref,
        } => {
            address(&mut b, *next_hop);
            u32_(&mut b, *my_as);
            u32_(&mut b, *src_as);
            u32_(&mut b, *src_peer_as);
            u32_(&mut b, path.len() as u32);
            for (kind, ases) in path {
                u32_(&mut b, *kind);
                u32_(&mut b, ases.len() as u32);
                for a in ases {
                    u32_(&mut b, *a);
                }
            }
            u32_(&mut b, communities.len() as u32);
            for c in communities {
                u32_(&mut b, *c);
            }
            u32_(&mut b, *local_pref);
            1003
        }
        FlowData::Other { format, body } => {
            b.extend_from_slice(body);
            *format
        }
    };
    (format, b)
}

/// The 88-byte generic interface counters record.
pub fn interface_counters(c: &InterfaceCounters) -> Vec<u8> {
    let mut b = Vec::with_capacity(88);
    u32_(&mut b, c.ifindex);
    u32_(&mut b, c.if_type);
    u64_(&mut b, c.speed_bps);
    u32_(&mut b, 1); // full duplex
    u32_(&mut b, u32::from(c.admin_up) | (u32::from(c.oper_up) << 1));
    u64_(&mut b, c.in_octets);
    for v in [
        c.in_unicast,
        c.in_multicast,
        c.in_broadcast,
        c.in_discards,
        c.in_errors,
        0,
    ] {
        u32_(&mut b, v);
    }
    u64_(&mut b, c.out_octets);
    for v in [
        c.out_unicast,
        c.out_multicast,
        c.out_broadcast,
        c.out_discards,
        c.out_errors,
        0,
    ] {
        u32_(&mut b, v);
    }
    b
}

/// What a sampled packet's headers say, for [`packet_header`].
#[derive(Debug, Clone, Copy)]
pub struct PacketSpec {
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub tos: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// ICMP type and code, for protocols 1 and 58.
    pub icmp: (u8, u8),
}

/// An Ethernet frame's first bytes (with an 802.1Q tag when `vlan` is set), an IPv4 or
/// IPv6 header and the transport header, as an agent would copy them.
pub fn packet_header(p: &PacketSpec) -> Vec<u8> {
    let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if let Some(v) = p.vlan {
        b.extend_from_slice(&[0x81, 0x00]);
        b.extend_from_slice(&(v & 0x0fff).to_be_bytes());
    }
    let mut l4 = Vec::new();
    match p.proto {
        6 => {
            l4.extend_from_slice(&p.src_port.to_be_bytes());
            l4.extend_from_slice(&p.dst_port.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, p.tcp_flags, 0xff, 0xff]);
            l4.extend_from_slice(&[0, 0, 0, 0]);
        }
        17 => {
            l4.extend_from_slice(&p.src_port.to_be_bytes());
            l4.extend_from_slice(&p.dst_port.to_be_bytes());
            l4.extend_from_slice(&[0, 8, 0, 0]);
        }
        1 | 58 => l4.extend_from_slice(&[p.icmp.0, p.icmp.1, 0, 0, 0, 0, 0, 0]),
        _ => {}
    }
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.extend_from_slice(&[0x08, 0x00]);
            let total = (20 + l4.len()) as u16;
            b.extend_from_slice(&[0x45, p.tos]);
            b.extend_from_slice(&total.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0x40, 0, 64, p.proto, 0, 0]);
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let to16 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            b.extend_from_slice(&[0x86, 0xdd]);
            b.extend_from_slice(&[0x60 | (p.tos >> 4), p.tos << 4, 0, 0]);
            b.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            b.extend_from_slice(&[p.proto, 64]);
            b.extend_from_slice(&to16(s));
            b.extend_from_slice(&to16(d));
        }
    }
    b.extend_from_slice(&l4);
    b
}
