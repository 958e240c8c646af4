//! sFlow version 5 (<https://sflow.org/sflow_version_5.txt>): flow samples become one
//! [`FlowRecord`] each (one sampled packet, to be scaled by the sample's sampling rate),
//! generic interface counter samples become [`InterfaceCounters`].
//!
//! Decoded: flow samples (format 1) and expanded flow samples (3) with their raw packet
//! header (record 1: Ethernet with 802.1Q/802.1ad tags, or bare IPv4/IPv6, then TCP,
//! UDP, SCTP ports, ICMP type/code, ToS, TCP flags), sampled IPv4 (3) and IPv6 (4),
//! extended switch (1001), router (1002) and gateway (1003) records; counter samples (2)
//! and expanded counter samples (4) with generic interface counters (record 1).
//! Everything else, including other enterprises' formats, is skipped by its length.
//!
//! Every length is checked against what encloses it. A sample whose records do not fit
//! it is dropped and reported in [`PacketSummary::set_errors`]; the samples decoded
//! before it are kept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{be, DecodeError, FlowRecord, PacketSummary, Protocol};

/// The datagram version this module decodes.
pub const VERSION: u32 = 5;

/// Generic interface counters (counter record 1) of one interface, as the agent sent
/// them. A counter the agent does not have is all ones (`u32::MAX` / `u64::MAX`), as
/// the specification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceCounters {
    /// The datagram's sub-agent id.
    pub source_id: u32,
    /// The datagram's agent uptime in ms, to measure the interval between two samples.
    pub uptime_ms: u32,
    pub ifindex: u32,
    pub if_type: u32,
    /// ifSpeed in bits per second (0 when unknown).
    pub speed_bps: u64,
    /// ifStatus bit 0.
    pub admin_up: bool,
    /// ifStatus bit 1.
    pub oper_up: bool,
    pub in_octets: u64,
    pub in_unicast: u32,
    pub in_multicast: u32,
    pub in_broadcast: u32,
    pub in_discards: u32,
    pub in_errors: u32,
    pub out_octets: u64,
    pub out_unicast: u32,
    pub out_multicast: u32,
    pub out_broadcast: u32,
    pub out_discards: u32,
    pub out_errors: u32,
}

// Sample formats (enterprise 0).
const FLOW_SAMPLE: u32 = 1;
const COUNTER_SAMPLE: u32 = 2;
const FLOW_SAMPLE_EXPANDED: u32 = 3;
const COUNTER_SAMPLE_EXPANDED: u32 = 4;
// Flow record formats.
const RAW_HEADER: u32 = 1;
const SAMPLED_IPV4: u32 = 3;
const SAMPLED_IPV6: u32 = 4;
const EXTENDED_SWITCH: u32 = 1001;
const EXTENDED_ROUTER: u32 = 1002;
const EXTENDED_GATEWAY: u32 = 1003;
// Counter record formats.
const GENERIC_INTERFACE: u32 = 1;
const GENERIC_INTERFACE_LEN: usize = 88;

/// Interface value meaning "no interface: the agent itself" (compact format 0).
const IF_SELF: u32 = 0x3fff_ffff;
/// Extension headers followed before giving up on the IPv6 transport header.
const MAX_IPV6_EXTENSIONS: usize = 8;
/// 802.1Q / 802.1ad tags followed before giving up on the Ethernet payload.
const MAX_VLAN_TAGS: usize = 4;

/// A bounds-checked reader of XDR (big-endian, 4-byte aligned) fields.
struct Xdr<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Xdr<'a> {
    fn new(b: &'a [u8]) -> Self {
        Xdr { b, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.at)
    }

    fn u32(&mut self) -> Option<u32> {
        let v = be::u32_at(self.b, self.at)?;
        self.at += 4;
        Some(v)
    }

    fn u64(&mut self) -> Option<u64> {
        let hi = be::u32_at(self.b, self.at)?;
        let lo = be::u32_at(self.b, self.at.checked_add(4)?)?;
        self.at += 8;
        Some((u64::from(hi) << 32) | u64::from(lo))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    /// An XDR `opaque<>`: a length, the bytes, padding to a multiple of 4.
    fn opaque(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        let s = self.bytes(len)?;
        self.bytes((4 - len % 4) % 4)?;
        Some(s)
    }

    /// An sFlow `address`: type 0 (unknown, no bytes), 1 (IPv4) or 2 (IPv6).
    fn address(&mut self) -> Result<Option<IpAddr>, AddressError> {
        match self.u32().ok_or(AddressError::Short)? {
            0 => Ok(None),
            1 => {
                let s = self.bytes(4).ok_or(AddressError::Short)?;
                Ok(Some(IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3]))))
            }
            2 => {
                let s = self.bytes(16).ok_or(AddressError::Short)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(s);
                Ok(Some(IpAddr::V6(Ipv6Addr::from(a))))
            }
            other => Err(AddressError::Type(other)),
        }
    }
}

enum AddressError {
    Short,
    Type(u32),
}

/// What the packet header or sampled IP record says about the packet.
#[derive(Debug, Default, Clone, Copy)]
struct Packet {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: u8,
    tos: u8,
    tcp_flags: u8,
    src_port: u16,
    dst_port: u16,
    icmp_type_code: Option<u16>,
    /// The outermost 802.1Q tag's VLAN id.
    vlan: Option<u16>,
}

/// The records of one flow sample, combined into one [`FlowRecord`] at the end.
#[derive(Debug, Default)]
struct FlowParts {
    /// Frame length and what the raw header showed.
    header: Option<(u32, Packet)>,
    /// IP length and the sampled IPv4/IPv6 record.
    sampled_ip: Option<(u32, Packet)>,
    switch: Option<(Option<u16>, Option<u16>)>,
    router: Option<(Option<IpAddr>, u8, u8)>,
    gateway: Option<(Option<IpAddr>, u32, u32)>,
}

/// Decode one sFlow v5 datagram. Flow samples are appended to `out`, interface counter
/// samples to `counters`. On `Err` nothing was appended.
pub fn decode(
    now_ms: i64,
    datagram: &[u8],
    out: &mut Vec<FlowRecord>,
    counters: &mut Vec<InterfaceCounters>,
) -> Result<PacketSummary, DecodeError> {
    let mut x = Xdr::new(datagram);
    let truncated = |need: usize| DecodeError::TruncatedHeader {
        what: "sFlow v5",
        len: datagram.len(),
        need,
    };
    let version = x.u32().ok_or_else(|| truncated(28))?;
    if version != VERSION {
        return Err(DecodeError::SflowVersion(version));
    }
    let address_len = match x.u32().ok_or_else(|| truncated(28))? {
        0 => 0,
        1 => 4,
        2 => 16,
        address_type => return Err(DecodeError::SflowAddressType { address_type }),
    };
    let need = 24 + address_len;
    x.bytes(address_len).ok_or_else(|| truncated(need))?;
    let sub_agent_id = x.u32().ok_or_else(|| truncated(need))?;
    let sequence = x.u32().ok_or_else(|| truncated(need))?;
    let uptime_ms = x.u32().ok_or_else(|| truncated(need))?;
    let count = x.u32().ok_or_else(|| truncated(need))?;

    let mut summary = PacketSummary {
        protocol: Protocol::Sflow,
        source_id: sub_agent_id,
        sequence,
        sequence_advance: Some(1),
        sys_uptime_ms: Some(uptime_ms),
        records: 0,
        held_sets: 0,
        set_errors: Vec::new(),
    };
    let header = SampleContext {
        now_ms,
        sub_agent_id,
        uptime_ms,
    };
    for index in 0..count {
        if x.remaining() < 8 {
            summary.set_errors.push(DecodeError::SflowSampleCount {
                count,
                found: index,
            });
            break;
        }
        let format = x.u32().unwrap_or(0);
        let length = x.u32().unwrap_or(0);
        let remaining = x.remaining();
        let Some(body) = usize::try_from(length).ok().and_then(|l| x.bytes(l)) else {
            summary.set_errors.push(DecodeError::SflowSampleLength {
                index,
                format,
                length,
                remaining,
            });
            break;
        };
        let result = match format {
            FLOW_SAMPLE | FLOW_SAMPLE_EXPANDED => {
                flow_sample(&header, format == FLOW_SAMPLE_EXPANDED, body).map(|r| {
                    out.push(r);
                    summary.records += 1;
                })
            }
            COUNTER_SAMPLE | COUNTER_SAMPLE_EXPANDED => {
                counter_sample(&header, format == COUNTER_SAMPLE_EXPANDED, body, counters)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            summary.set_errors.push(e);
        }
    }
    Ok(summary)
}

struct SampleContext {
    now_ms: i64,
    sub_agent_id: u32,
    uptime_ms: u32,
}

/// A compact interface value: two format bits and a 30-bit value. Only format 0 names
/// an interface, and its all-ones value means the agent itself; both give 0.
fn compact_interface(v: u32) -> u32 {
    let value = v & IF_SELF;
    if v >> 30 != 0 || value == IF_SELF {
        0
    } else {
        value
    }
}

/// An expanded interface: format 0 names an interface, 1 (discarded) and 2 (several
/// outputs) give 0.
fn expanded_interface(format: u32, value: u32) -> u32 {
    if format == 0 {
        value
    } else {
        0
    }
}

fn sample_short(format: u32, body: &[u8]) -> DecodeError {
    DecodeError::SflowSampleShort {
        format,
        length: body.len(),
    }
}

/// Walk the `[format u32][length u32][body]` records of a sample; `f` gets each known
/// (enterprise 0) record. A record past the sample's end, or fewer records than the
/// sample announces, is an error for the whole sample.
fn records<'a>(
    x: &mut Xdr<'a>,
    sample_format: u32,
    mut f: impl FnMut(u32, &'a [u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let count = x.u32().ok_or(DecodeError::SflowSampleShort {
        format: sample_format,
        length: x.b.len(),
    })?;
    for found in 0..count {
        if x.remaining() < 8 {
            return Err(DecodeError::SflowRecordCount {
                sample_format,
                count,
                found,
            });
        }
        let format = x.u32().unwrap_or(0);
        let length = x.u32().unwrap_or(0);
        let remaining = x.remaining();
        let body = usize::try_from(length)
            .ok()
            .and_then(|l| x.bytes(l))
            .ok_or(DecodeError::SflowRecordLength {
                sample_format,
                format,
                length,
                remaining,
            })?;
        // Enterprise 0 only: its 20 top bits are zero.
        if format >> 12 == 0 {
            f(format, body)?;
        }
    }
    Ok(())
}

fn record_short(format: u32, body: &[u8]) -> DecodeError {
    DecodeError::SflowRecordShort {
        format,
        length: body.len(),
    }
}

fn flow_sample(
    ctx: &SampleContext,
    expanded: bool,
    body: &[u8],
) -> Result<FlowRecord, DecodeError> {
    let format = if expanded {
        FLOW_SAMPLE_EXPANDED
    } else {
        FLOW_SAMPLE
    };
    let short = || sample_short(format, body);
    let mut x = Xdr::new(body);
    let (sampling_rate, input_if, output_if) = if expanded {
        // sequence, source id type, source id index
        x.bytes(12).ok_or_else(short)?;
        let rate = x.u32().ok_or_else(short)?;
        // sample pool, drops
        x.bytes(8).ok_or_else(short)?;
        let in_format = x.u32().ok_or_else(short)?;
        let in_value = x.u32().ok_or_else(short)?;
        let out_format = x.u32().ok_or_else(short)?;
        let out_value = x.u32().ok_or_else(short)?;
        (
            rate,
            expanded_interface(in_format, in_value),
            expanded_interface(out_format, out_value),
        )
    } else {
        // sequence, source id
        x.bytes(8).ok_or_else(short)?;
        let rate = x.u32().ok_or_else(short)?;
        x.bytes(8).ok_or_else(short)?;
        let input = x.u32().ok_or_else(short)?;
        let output = x.u32().ok_or_else(short)?;
        (rate, compact_interface(input), compact_interface(output))
    };
    let mut parts = FlowParts::default();
    records(&mut x, format, |record, body| {
        flow_record(record, body, &mut parts)
    })?;

    let mut r = FlowRecord {
        input_if,
        output_if,
        packets: 1,
        flows: 1,
        sampling_rate: sampling_rate.max(1),
        start_ms: ctx.now_ms,
        end_ms: ctx.now_ms,
        ..FlowRecord::default()
    };
    let has_ip = |p: &Option<(u32, Packet)>| p.is_some_and(|(_, p)| p.src.is_some());
    let packet = if has_ip(&parts.header) || parts.sampled_ip.is_none() {
        parts.header.map(|(_, p)| p)
    } else {
        parts.sampled_ip.map(|(_, p)| p)
    };
    r.bytes = parts
        .header
        .or(parts.sampled_ip)
        .map_or(0, |(len, _)| u64::from(len));
    if let Some(p) = packet {
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        r.src_addr = p.src.unwrap_or(unspecified);
        r.dst_addr = p.dst.unwrap_or(unspecified);
        r.proto = p.proto;
        r.tos = p.tos;
        r.tcp_flags = p.tcp_flags;
        r.src_port = p.src_port;
        r.dst_port = p.dst_port;
        r.icmp_type_code = p.icmp_type_code;
        r.src_vlan = p.vlan;
    }
    if let Some((src, dst)) = parts.switch {
        r.src_vlan = src.or(r.src_vlan);
        r.dst_vlan = dst;
    }
    let hop = |a: Option<IpAddr>| a.filter(|a| !a.is_unspecified());
    if let Some((next_hop, src_mask, dst_mask)) = parts.router {
        r.next_hop = hop(next_hop);
        r.src_mask = src_mask;
        r.dst_mask = dst_mask;
    }
    if let Some((next_hop, src_as, dst_as)) = parts.gateway {
        r.next_hop = r.next_hop.or(hop(next_hop));
        r.src_as = src_as;
        r.dst_as = dst_as;
    }
    Ok(r)
}

/// A VLAN id from an extended switch record: 12 bits; anything larger (agents send all
/// ones for "unknown") is no VLAN.
fn vlan(v: u32) -> Option<u16> {
    u16::try_from(v).ok().filter(|v| *v <= 0x0fff)
}

fn flow_record(format: u32, body: &[u8], parts: &mut FlowParts) -> Result<(), DecodeError> {
    let short = || record_short(format, body);
    let mut x = Xdr::new(body);
    let address = |x: &mut Xdr<'_>| {
        x.address().map_err(|e| match e {
            AddressError::Short => short(),
            AddressError::Type(address_type) => DecodeError::SflowAddressType { address_type },
        })
    };
    match format {
        RAW_HEADER => {
            let protocol = x.u32().ok_or_else(short)?;
            let frame_length = x.u32().ok_or_else(short)?;
            let _stripped = x.u32().ok_or_else(short)?;
            let header = x.opaque().ok_or_else(short)?;
            if parts.header.is_none() {
                parts.header = Some((frame_length, raw_header(protocol, header)));
            }
        }
        SAMPLED_IPV4 | SAMPLED_IPV6 => {
            let length = x.u32().ok_or_else(short)?;
            let proto = x.u32().ok_or_else(short)?;
            let (src, dst) = if format == SAMPLED_IPV4 {
                let s = x.bytes(8).ok_or_else(short)?;
                (
                    IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3])),
                    IpAddr::V4(Ipv4Addr::new(s[4], s[5], s[6], s[7])),
                )
            } else {
                let s = x.bytes(32).ok_or_else(short)?;
                let mut a = [0u8; 16];
                let mut b = [0u8; 16];
                a.copy_from_slice(&s[..16]);
                b.copy_from_slice(&s[16..]);
                (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))
            };
            let src_port = x.u32().ok_or_else(short)?;
            let dst_port = x.u32().ok_or_else(short)?;
            let tcp_flags = x.u32().ok_or_else(short)?;
            let tos = x.u32().ok_or_else(short)?;
            let proto = proto as u8;
            let icmp = proto == 1 || proto == 58;
            if parts.sampled_ip.is_none() {
                parts.sampled_ip = Some((
                    length,
                    Packet {
                        src: Some(src),
                        dst: Some(dst),
                        proto,
                        tos: tos as u8,
                        tcp_flags: tcp_flags as u8,
                        // For ICMP the "ports" carry type and code.
                        src_port: if icmp { 0 } else { src_port as u16 },
                        dst_port: if icmp { 0 } else { dst_port as u16 },
                        icmp_type_code: icmp
                            .then_some(((src_port as u16 & 0xff) << 8) | (dst_port as u16 & 0xff)),
                        vlan: None,
                    },
                ));
            }
        }
        EXTENDED_SWITCH => {
            let src = x.u32().ok_or_else(short)?;
            let _src_priority = x.u32().ok_or_else(short)?;
            let dst = x.u32().ok_or_else(short)?;
            let _dst_priority = x.u32().ok_or_else(short)?;
            parts.switch = Some((vlan(src), vlan(dst)));
        }
        EXTENDED_ROUTER => {
            let next_hop = address(&mut x)?;
            let src_mask = x.u32().ok_or_else(short)?;
            let dst_mask = x.u32().ok_or_else(short)?;
            parts.router = Some((next_hop, src_mask.min(128) as u8, dst_mask.min(128) as u8));
        }
        EXTENDED_GATEWAY => {
            let next_hop = address(&mut x)?;
            let _my_as = x.u32().ok_or_else(short)?;
            let src_as = x.u32().ok_or_else(short)?;
            let _src_peer_as = x.u32().ok_or_else(short)?;
            let segments = x.u32().ok_or_else(short)?;
            // The destination AS is the last AS of the last segment of the path.
            let mut dst_as = 0;
            for _ in 0..segments {
                let _segment_type = x.u32().ok_or_else(short)?;
                let len = x.u32().ok_or_else(short)?;
                let n = usize::try_from(len).map_err(|_| short())?;
                let ases = x
                    .bytes(n.checked_mul(4).ok_or_else(short)?)
                    .ok_or_else(short)?;
                if n > 0 {
                    dst_as = be::u32_at(ases, (n - 1) * 4).unwrap_or(0);
                }
            }
            parts.gateway = Some((next_hop, src_as, dst_as));
        }
        _ => {}
    }
    Ok(())
}

/// What a sampled packet header shows. A header cut short (agents send the first 128
/// bytes or so) yields what was there.
fn raw_header(protocol: u32, h: &[u8]) -> Packet {
    let mut p = Packet::default();
    match protocol {
        1 => ethernet(h, &mut p),
        11 => ipv4(h, &mut p),
        12 => ipv6(h, &mut p),
        _ => {}
    }
    p
}

fn ethernet(h: &[u8], p: &mut Packet) {
    let mut at = 12;
    let Some(mut ethertype) = be::u16_at(h, at) else {
        return;
    };
    for _ in 0..MAX_VLAN_TAGS {
        if !matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            break;
        }
        let (Some(tci), Some(next)) = (be::u16_at(h, at + 2), be::u16_at(h, at + 4)) else {
            return;
        };
        if p.vlan.is_none() {
            p.vlan = Some(tci & 0x0fff);
        }
        ethertype = next;
        at += 4;
    }
    let payload = h.get(at + 2..).unwrap_or_default();
    match ethertype {
        0x0800 => ipv4(payload, p),
        0x86dd => ipv6(payload, p),
        _ => {}
    }
}

fn ipv4(b: &[u8], p: &mut Packet) {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    p.tos = b[1];
    p.proto = b[9];
    p.src = Some(IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])));
    p.dst = Some(IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])));
    let fragment_offset = be::u16_at(b, 6).unwrap_or(0) & 0x1fff;
    if ihl >= 20 && fragment_offset == 0 {
        if let Some(l4) = b.get(ihl..) {
            transport(p.proto, l4, p);
        }
    }
}

fn ipv6(b: &[u8], p: &mut Packet) {
    if b.len() < 40 || b[0] >> 4 != 6 {
        return;
    }
    p.tos = (b[0] << 4) | (b[1] >> 4);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&b[8..24]);
    dst.copy_from_slice(&b[24..40]);
    p.src = Some(IpAddr::V6(Ipv6Addr::from(src)));
    p.dst = Some(IpAddr::V6(Ipv6Addr::from(dst)));
    let mut next = b[6];
    let mut at = 40usize;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let len = match next {
            // Hop-by-hop, routing, destination options: (length + 1) * 8 bytes.
            0 | 43 | 60 => b.get(at + 1).map(|&l| (usize::from(l) + 1) * 8),
            // Authentication header: (length + 2) * 4 bytes.
            51 => b.get(at + 1).map(|&l| (usize::from(l) + 2) * 4),
            44 => {
                // A fragment other than the first has no transport header.
                let offset = be::u16_at(b, at + 2).map(|v| v >> 3);
                match (b.get(at), offset) {
                    (Some(&n), Some(0)) => {
                        next = n;
                        at += 8;
                        continue;
                    }
                    (Some(&n), Some(_)) => {
                        p.proto = n;
                        return;
                    }
                    _ => None,
                }
            }
            _ => break,
        };
        match (b.get(at), len) {
            (Some(&n), Some(len)) => {
                next = n;
                at += len;
            }
            _ => {
                p.proto = next;
                return;
            }
        }
    }
    p.proto = next;
    if let Some(l4) = b.get(at..) {
        transport(next, l4, p);
    }
}

fn transport(proto: u8, l4: &[u8], p: &mut Packet) {
    match proto {
        // TCP, UDP, SCTP, UDP-Lite: ports first.
        6 | 17 | 132 | 136 => {
            if let (Some(s), Some(d)) = (be::u16_at(l4, 0), be::u16_at(l4, 2)) {
                p.src_port = s;
                p.dst_port = d;
            }
            if proto == 6 {
                if let Some(&flags) = l4.get(13) {
                    p.tcp_flags = flags;
                }
            }
        }
        1 | 58 => {
            if let (Some(&t), Some(&c)) = (l4.first(), l4.get(1)) {
                p.icmp_type_code = Some((u16::from(t) << 8) | u16::from(c));
            }
        }
        _ => {}
    }
}

fn counter_sample(
    ctx: &SampleContext,
    expanded: bool,
    body: &[u8],
    counters: &mut Vec<InterfaceCounters>,
) -> Result<(), DecodeError> {
    let format = if expanded {
        COUNTER_SAMPLE_EXPANDED
    } else {
        COUNTER_SAMPLE
    };
    let mut x = Xdr::new(body);
    // sequence, source id (type and index, or both in one word)
    x.bytes(if expanded { 12 } else { 8 })
        .ok_or_else(|| sample_short(format, body))?;
    let start = counters.len();
    let result = records(&mut x, format, |record, body| {
        if record == GENERIC_INTERFACE {
            counters.push(generic_interface(ctx, body)?);
        }
        Ok(())
    });
    if result.is_err() {
        counters.truncate(start);
    }
    result
}

fn generic_interface(ctx: &SampleContext, body: &[u8]) -> Result<InterfaceCounters, DecodeError> {
    if body.len() < GENERIC_INTERFACE_LEN {
        return Err(record_short(GENERIC_INTERFACE, body));
    }
    let mut x = Xdr::new(body);
    let short = || record_short(GENERIC_INTERFACE, body);
    let ifindex = x.u32().ok_or_else(short)?;
    let if_type = x.u32().ok_or_else(short)?;
    let speed_bps = x.u64().ok_or_else(short)?;
    let _direction = x.u32().ok_or_else(short)?;
    let status = x.u32().ok_or_else(short)?;
    let in_octets = x.u64().ok_or_else(short)?;
    let mut c = InterfaceCounters {
        source_id: ctx.sub_agent_id,
        uptime_ms: ctx.uptime_ms,
        ifindex,
        if_type,
        speed_bps,
        admin_up: status & 1 != 0,
        oper_up: status & 2 != 0,
        in_octets,
        ..InterfaceCounters::default()
    };
    for field in [
        &mut c.in_unicast,
        &mut c.in_multicast,
        &mut c.in_broadcast,
        &mut c.in_discards,
        &mut c.in_errors,
    ] {
        *field = x.u32().ok_or_else(short)?;
    }
    let _unknown_protos = x.u32().ok_or_else(short)?;
    c.out_octets = x.u64().ok_or_else(short)?;
    for field in [
        &mut c.out_unicast,
        &mut c.out_multicast,
        &mut c.out_broadcast,
        &mut c.out_discards,
        &mut c.out_errors,
    ] {
        *field = x.u32().ok_or_else(short)?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::sflow::{
        encode, packet_header, CounterData, Datagram, FlowData, Interface, PacketSpec, Sample,
    };

    const NOW: i64 = 1_700_000_000_123;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn decode_all(
        b: &[u8],
    ) -> (
        Result<PacketSummary, DecodeError>,
        Vec<FlowRecord>,
        Vec<InterfaceCounters>,
    ) {
        let mut out = Vec::new();
        let mut counters = Vec::new();
        let r = decode(NOW, b, &mut out, &mut counters);
        (r, out, counters)
    }

    fn tcp_v4() -> PacketSpec {
        PacketSpec {
            vlan: Some(809),
            src: ip("192.0.2.1"),
            dst: ip("198.51.100.7"),
            proto: 6,
            tos: 0x28,
            src_port: 443,
            dst_port: 51_000,
            tcp_flags: 0x18,
            icmp: (0, 0),
        }
    }

    fn counters(ifindex: u32) -> InterfaceCounters {
        InterfaceCounters {
            source_id: 7,
            uptime_ms: 90_000,
            ifindex,
            if_type: 6,
            speed_bps: 10_000_000_000,
            admin_up: true,
            oper_up: true,
            in_octets: 0x1_0000_0005,
            in_unicast: 1000,
            in_multicast: 20,
            in_broadcast: 3,
            in_discards: 4,
            in_errors: 5,
            out_octets: 77_000,
            out_unicast: 900,
            out_multicast: 10,
            out_broadcast: 2,
            out_discards: 1,
            out_errors: u32::MAX,
        }
    }

    /// Two flow samples (compact and expanded) and one counter sample.
    fn datagram() -> Datagram {
        Datagram {
            agent: Some(ip("10.0.0.1")),
            sub_agent_id: 7,
            sequence: 4242,
            uptime_ms: 90_000,
            samples: vec![
                Sample::Flow {
                    expanded: false,
                    sequence: 1,
                    source_id: 3,
                    sampling_rate: 512,
                    sample_pool: 5000,
                    drops: 0,
                    input: Interface::index(3),
                    output: Interface::index(4),
                    records: vec![
                        FlowData::Switch {
                            src_vlan: 100,
                            dst_vlan: 200,
                        },
                        FlowData::RawHeader {
                            protocol: 1,
                            frame_length: 1514,
                            stripped: 4,
                            header: packet_header(&tcp_v4()),
                        },
                        FlowData::Other {
                            format: (9 << 12) | 1,
                            body: vec![1, 2, 3, 4],
                        },
                        FlowData::Router {
                            next_hop: Some(ip("192.0.2.254")),
                            src_mask: 24,
                            dst_mask: 16,
                        },
                        FlowData::Gateway {
                            next_hop: Some(ip("192.0.2.253")),
                            my_as: 65000,
                            src_as: 64496,
                            src_peer_as: 64497,
                            path: vec![(2, vec![64500, 64501]), (1, vec![64510, 64511])],
                            communities: vec![1, 2],
                            local_pref: 100,
                        },
                    ],
                },
                Sample::Other {
                    format: 5,
                    body: vec![0; 12],
                },
                Sample::Flow {
                    expanded: true,
                    sequence: 2,
                    source_id: 3,
                    sampling_rate: 0,
                    sample_pool: 5000,
                    drops: 0,
                    input: Interface::index(70_000),
                    output: Interface {
                        format: 1,
                        value: 258,
                    },
                    records: vec![FlowData::RawHeader {
                        protocol: 12,
                        frame_length: 1280,
                        stripped: 0,
                        header: packet_header(&PacketSpec {
                            vlan: None,
                            src: ip("2001:db8::1"),
                            dst: ip("2001:db8::2"),
                            proto: 17,
                            tos: 0xb8,
                            src_port: 53,
                            dst_port: 40_000,
                            tcp_flags: 0,
                            icmp: (0, 0),
                        })[14..]
                            .to_vec(),
                    }],
                },
                Sample::Counters {
                    expanded: false,
                    sequence: 9,
                    source_id: 3,
                    records: vec![
                        CounterData::Other {
                            format: 2,
                            body: vec![0; 8],
                        },
                        CounterData::Interface(counters(3)),
                    ],
                },
            ],
        }
    }

    fn expected_first() -> FlowRecord {
        FlowRecord {
            src_addr: ip("192.0.2.1"),
            dst_addr: ip("198.51.100.7"),
            next_hop: Some(ip("192.0.2.254")),
            src_port: 443,
            dst_port: 51_000,
            proto: 6,
            tos: 0x28,
            tcp_flags: 0x18,
            src_mask: 24,
            dst_mask: 16,
            input_if: 3,
            output_if: 4,
            src_as: 64496,
            dst_as: 64511,
            src_vlan: Some(100),
            dst_vlan: Some(200),
            icmp_type_code: None,
            bytes: 1514,
            packets: 1,
            flows: 1,
            sampling_rate: 512,
            start_ms: NOW,
            end_ms: NOW,
        }
    }

    fn expected_second() -> FlowRecord {
        FlowRecord {
            src_addr: ip("2001:db8::1"),
            dst_addr: ip("2001:db8::2"),
            src_port: 53,
            dst_port: 40_000,
            proto: 17,
            tos: 0xb8,
            input_if: 70_000,
            output_if: 0,
            bytes: 1280,
            packets: 1,
            sampling_rate: 1,
            start_ms: NOW,
            end_ms: NOW,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn flow_and_counter_samples_decode_exactly() {
        let (r, out, c) = decode_all(&encode(&datagram()));
        assert_eq!(
            r.unwrap(),
            PacketSummary {
                protocol: Protocol::Sflow,
                source_id: 7,
                sequence: 4242,
                sequence_advance: Some(1),
                sys_uptime_ms: Some(90_000),
                records: 2,
                held_sets: 0,
                set_errors: vec![],
            }
        );
        assert_eq!(out, vec![expected_first(), expected_second()]);
        assert_eq!(c, vec![counters(3)]);
    }

    #[test]
    fn dispatch_from_decode_datagram() {
        let mut decoder = crate::decode::Decoder::new(crate::decode::Limits::default());
        let mut out = Vec::new();
        let mut c = Vec::new();
        let s = crate::decode::decode_datagram_with_counters(
            &mut decoder,
            ip("10.0.0.1"),
            NOW,
            &encode(&datagram()),
            &mut out,
            &mut c,
        )
        .unwrap();
        assert_eq!((s.protocol, out.len(), c.len()), (Protocol::Sflow, 2, 1));
        let mut v4 = encode(&datagram());
        v4[3] = 4;
        assert_eq!(
            crate::decode::decode_datagram(&mut decoder, ip("10.0.0.1"), NOW, &v4, &mut out),
            Err(DecodeError::SflowVersion(4))
        );
        assert_eq!(
            DecodeError::SflowVersion(4).to_string(),
            "sFlow version 4 is not supported (only version 5 is)"
        );
    }

    #[test]
    fn vlan_tag_in_the_header_when_there_is_no_switch_record() {
        let mut d = datagram();
        d.samples.truncate(1);
        if let Sample::Flow { records, .. } = &mut d.samples[0] {
            records.remove(0);
        }
        let (_, out, _) = decode_all(&encode(&d));
        assert_eq!(
            (out[0].src_vlan, out[0].dst_vlan),
            (Some(809), None),
            "the 802.1Q tag of the sampled frame"
        );
    }

    #[test]
    fn sampled_ip_records_and_interface_formats() {
        let sample = |output: u32, record: FlowData| Sample::Flow {
            expanded: false,
            sequence: 1,
            source_id: 0,
            sampling_rate: 100,
            sample_pool: 0,
            drops: 0,
            input: Interface::index(0x3fff_ffff),
            output: Interface {
                format: output >> 30,
                value: output,
            },
            records: vec![record],
        };
        let d = Datagram {
            agent: Some(ip("2001:db8::99")),
            sub_agent_id: 0,
            sequence: 1,
            uptime_ms: 1,
            samples: vec![
                sample(
                    (2 << 30) | 5,
                    FlowData::SampledIp {
                        length: 84,
                        proto: 1,
                        src: ip("203.0.113.4"),
                        dst: ip("203.0.113.5"),
                        src_port: 8,
                        dst_port: 0,
                        tcp_flags: 0,
                        tos: 4,
                    },
                ),
                sample(
                    12,
                    FlowData::SampledIp {
                        length: 1400,
                        proto: 6,
                        src: ip("2001:db8::1"),
                        dst: ip("2001:db8::2"),
                        src_port: 22,
                        dst_port: 50_000,
                        tcp_flags: 0x12,
                        tos: 0,
                    },
                ),
            ],
        };
        let (r, out, _) = decode_all(&encode(&d));
        assert_eq!(r.unwrap().records, 2);
        assert_eq!(
            out[0],
            FlowRecord {
                src_addr: ip("203.0.113.4"),
                dst_addr: ip("203.0.113.5"),
                proto: 1,
                tos: 4,
                icmp_type_code: Some(0x0800),
                bytes: 84,
                packets: 1,
                sampling_rate: 100,
                start_ms: NOW,
                end_ms: NOW,
                ..FlowRecord::default()
            }
        );
        assert_eq!(
            (
                out[1].src_port,
                out[1].dst_port,
                out[1].tcp_flags,
                out[1].output_if,
                out[1].bytes
            ),
            (22, 50_000, 0x12, 12, 1400)
        );
    }

    #[test]
    fn ipv6_extension_headers_and_fragments() {
        let mut h = packet_header(&PacketSpec {
            vlan: None,
            src: ip("2001:db8::1"),
            dst: ip("2001:db8::2"),
            proto: 0, // hop-by-hop, then the UDP header below
            tos: 0,
            src_port: 0,
            dst_port: 0,
            tcp_flags: 0,
            icmp: (0, 0),
        });
        h.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 8, 0, 0]);
        let mut p = Packet::default();
        ethernet(&h, &mut p);
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 0x1234, 53));
        // A later fragment: the protocol, no ports.
        let at = h.len() - 16;
        h[at - 40 + 6] = 44;
        h[at..at + 8].copy_from_slice(&[17, 0, 0x05, 0x00, 0, 0, 0, 1]);
        let mut p = Packet::default();
        ethernet(&h, &mut p);
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 0, 0));
    }

    #[test]
    fn expanded_counter_sample_and_unknown_counters() {
        let mut c = counters(70_001);
        c.source_id = 0;
        c.uptime_ms = 5;
        let d = Datagram {
            agent: None,
            sub_agent_id: 0,
            sequence: 1,
            uptime_ms: 5,
            samples: vec![Sample::Counters {
                expanded: true,
                sequence: 1,
                source_id: 70_001,
                records: vec![CounterData::Interface(c)],
            }],
        };
        let (r, out, got) = decode_all(&encode(&d));
        assert_eq!((r.unwrap().records, out.len()), (0, 0));
        assert_eq!(got, vec![c]);
    }

    /// Every prefix of a datagram either fails as a whole (nothing appended) or yields
    /// exactly the samples that fit in it, the same as the whole datagram's.
    #[test]
    fn truncation_at_every_offset() {
        let full = encode(&datagram());
        let (_, all, all_counters) = decode_all(&full);
        for n in 0..full.len() {
            let (r, out, c) = decode_all(&full[..n]);
            match r {
                Err(e) => {
                    assert!(out.is_empty() && c.is_empty(), "{n}: {e}");
                    assert!(n < 28, "{n}: header error {e}");
                }
                Ok(s) => {
                    assert_eq!(s.records, out.len(), "{n}");
                    assert_eq!(out[..], all[..out.len()], "{n}");
                    assert_eq!(c[..], all_counters[..c.len()], "{n}");
                    assert!(!s.set_errors.is_empty(), "{n}: a cut datagram is an error");
                }
            }
        }
    }

    #[test]
    fn bit_flips_never_panic() {
        let full = encode(&datagram());
        for i in 0..full.len() * 8 {
            let mut b = full.clone();
            b[i / 8] ^= 1 << (i % 8);
            let (r, out, c) = decode_all(&b);
            if let Ok(s) = r {
                assert!(
                    s.records == out.len() && out.len() <= 3 && c.len() <= 2,
                    "bit {i}"
                );
            }
        }
    }

    fn header_only(count: u32) -> Vec<u8> {
        let mut b = encode(&Datagram {
            agent: Some(ip("10.0.0.1")),
            sub_agent_id: 1,
            sequence: 1,
            uptime_ms: 1,
            samples: vec![],
        });
        let at = b.len() - 4;
        b[at..].copy_from_slice(&count.to_be_bytes());
        b
    }

    #[test]
    fn hostile_counts_and_lengths() {
        // A huge sample count: the samples present are kept.
        let mut d = datagram();
        d.samples.truncate(1);
        let mut b = encode(&d);
        b[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        let (r, out, _) = decode_all(&b);
        let s = r.unwrap();
        assert_eq!(out, vec![expected_first()]);
        assert_eq!(
            s.set_errors,
            vec![DecodeError::SflowSampleCount {
                count: u32::MAX,
                found: 1
            }]
        );
        assert_eq!(
            s.set_errors[0].to_string(),
            "sFlow datagram announces 4294967295 samples but holds only 1"
        );

        // A sample length past the end.
        let mut b = header_only(1);
        b.extend_from_slice(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0]);
        let (r, out, _) = decode_all(&b);
        assert!(out.is_empty());
        assert_eq!(
            r.unwrap().set_errors,
            vec![DecodeError::SflowSampleLength {
                index: 0,
                format: 1,
                length: 0xffff_fff0,
                remaining: 4
            }]
        );

        // A record count past the sample's end, then a good sample: the good one stays.
        let mut bad = datagram();
        bad.samples = vec![bad.samples[0].clone(), bad.samples[2].clone()];
        let mut b = encode(&bad);
        // The first sample's record count sits after its 8-byte framing and 28 bytes.
        let at = 28 + 8 + 28;
        b[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
        let (r, out, _) = decode_all(&b);
        assert_eq!(out, vec![expected_second()]);
        assert_eq!(
            r.unwrap().set_errors,
            vec![DecodeError::SflowRecordCount {
                sample_format: 1,
                count: 1000,
                found: 5
            }]
        );
        // A record length past its sample.
        let mut b = encode(&bad);
        b[at + 8..at + 12].copy_from_slice(&0xffffu32.to_be_bytes());
        let (r, out, _) = decode_all(&b);
        assert_eq!(out, vec![expected_second()]);
        assert_eq!(r.unwrap().set_errors[0].kind(), "sflow_record_length");
    }

    #[test]
    fn hostile_as_path_and_addresses() {
        let gateway = |path: Vec<(u32, Vec<u32>)>| {
            let mut d = datagram();
            d.samples.truncate(1);
            if let Sample::Flow { records, .. } = &mut d.samples[0] {
                records.push(FlowData::Gateway {
                    next_hop: None,
                    my_as: 1,
                    src_as: 2,
                    src_peer_as: 3,
                    path,
                    communities: vec![],
                    local_pref: 0,
                });
            }
            encode(&d)
        };
        // An empty path: no destination AS; the last gateway record wins.
        let (r, out, _) = decode_all(&gateway(vec![]));
        assert!(r.unwrap().set_errors.is_empty());
        assert_eq!((out[0].src_as, out[0].dst_as), (2, 0));
        // A segment claiming 2^30 ASes.
        let mut b = gateway(vec![(2, vec![5])]);
        let n = b.len();
        // ... segment length sits before the AS, communities count and local pref.
        b[n - 16..n - 12].copy_from_slice(&0x4000_0000u32.to_be_bytes());
        let (r, out, _) = decode_all(&b);
        assert!(out.is_empty());
        assert_eq!(r.unwrap().set_errors[0].kind(), "sflow_record_short");
        // An agent address of type 3.
        let mut b = header_only(0);
        b[7] = 3;
        assert_eq!(
            decode_all(&b).0,
            Err(DecodeError::SflowAddressType { address_type: 3 })
        );
    }

    #[test]
    fn interface_words() {
        assert_eq!(compact_interface(27), 27);
        assert_eq!(compact_interface(0x3fff_ffff), 0);
        assert_eq!(compact_interface((1 << 30) | 5), 0);
        assert_eq!(compact_interface((2 << 30) | 3), 0);
        assert_eq!(expanded_interface(0, 1_285_816_721), 1_285_816_721);
        assert_eq!(expanded_interface(2, 7), 0);
        assert_eq!(vlan(4095), Some(4095));
        assert_eq!(vlan(u32::MAX), None);
    }
}
