//! Encoders that turn [`FlowRecord`]s into NetFlow v5, v9 and IPFIX datagrams, as an
//! exporter would. The traffic generator, the tests and the benchmarks use them; they
//! are the mirror image of [`crate::decode`]. sFlow has its own module, [`sflow`].

pub mod sflow;

use std::net::IpAddr;

use crate::decode::FlowRecord;

/// Records per datagram that keep v9/IPFIX under a 1500-byte MTU.
pub fn records_per_datagram(protocol: EncodeProtocol, ipv6: bool) -> usize {
    match (protocol, ipv6) {
        (EncodeProtocol::V5, _) => 30,
        // Flow samples per datagram, as switches typically send them.
        (EncodeProtocol::Sflow, _) => 8,
        (_, false) => 24,
        (_, true) => 14,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeProtocol {
    V5,
    V9,
    Ipfix,
    /// sFlow v5 flow samples ([`sflow`]); not a template protocol.
    Sflow,
}

/// v5 header values that are not derived from the records.
#[derive(Debug, Clone, Copy, Default)]
pub struct V5Header {
    pub sys_uptime_ms: u32,
    pub unix_ms: i64,
    pub flow_sequence: u32,
    pub engine_type: u8,
    pub engine_id: u8,
    /// Raw header field: two mode bits and a 14-bit interval.
    pub sampling_interval: u16,
}

/// Millisecond uptime of a flow time relative to an exporter booted at `boot_ms`.
fn uptime_of(boot_ms: i64, t_ms: i64) -> u32 {
    (t_ms - boot_ms) as u32
}

pub fn encode_v5(h: &V5Header, records: &[FlowRecord]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + 48 * records.len());
    let boot_ms = h.unix_ms - i64::from(h.sys_uptime_ms);
    b.extend_from_slice(&5u16.to_be_bytes());
    b.extend_from_slice(&(records.len() as u16).to_be_bytes());
    b.extend_from_slice(&h.sys_uptime_ms.to_be_bytes());
    b.extend_from_slice(&((h.unix_ms / 1000) as u32).to_be_bytes());
    b.extend_from_slice(&(((h.unix_ms % 1000) * 1_000_000) as u32).to_be_bytes());
    b.extend_from_slice(&h.flow_sequence.to_be_bytes());
    b.push(h.engine_type);
    b.push(h.engine_id);
    b.extend_from_slice(&h.sampling_interval.to_be_bytes());
    for r in records {
        b.extend_from_slice(&v4_bytes(r.src_addr));
        b.extend_from_slice(&v4_bytes(r.dst_addr));
        b.extend_from_slice(&r.next_hop.map(v4_bytes).unwrap_or([0; 4]));
        b.extend_from_slice(&(r.input_if as u16).to_be_bytes());
        b.extend_from_slice(&(r.output_if as u16).to_be_bytes());
        b.extend_from_slice(&(r.packets as u32).to_be_bytes());
        b.extend_from_slice(&(r.bytes as u32).to_be_bytes());
        b.extend_from_slice(&uptime_of(boot_ms, r.start_ms).to_be_bytes());
        b.extend_from_slice(&uptime_of(boot_ms, r.end_ms).to_be_bytes());
        b.extend_from_slice(&r.src_port.to_be_bytes());
        b.extend_from_slice(&r.dst_port.to_be_bytes());
        b.push(0);
        b.push(r.tcp_flags);
        b.push(r.proto);
        b.push(r.tos);
        b.extend_from_slice(&(r.src_as as u16).to_be_bytes());
        b.extend_from_slice(&(r.dst_as as u16).to_be_bytes());
        b.push(r.src_mask);
        b.push(r.dst_mask);
        b.extend_from_slice(&[0, 0]);
    }
    b
}

fn v4_bytes(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(_) => [0; 4],
    }
}

fn addr_bytes(a: IpAddr, ipv6: bool) -> Vec<u8> {
    match (a, ipv6) {
        (IpAddr::V4(v), false) => v.octets().to_vec(),
        (IpAddr::V6(v), true) => v.octets().to_vec(),
        (IpAddr::V4(v), true) => v.to_ipv6_mapped().octets().to_vec(),
        (IpAddr::V6(_), false) => vec![0; 4],
    }
}

/// The template the generator exports: (element id, length).
pub fn template_fields(protocol: EncodeProtocol, ipv6: bool) -> Vec<(u16, u16)> {
    let (src, dst, nh, alen) = if ipv6 {
        (27, 28, 62, 16)
    } else {
        (8, 12, 15, 4)
    };
    let mut f = vec![
        (1, 8),
        (2, 4),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 2),
        (src, alen),
        (9, 1),
        (10, 4),
        (11, 2),
        (dst, alen),
        (13, 1),
        (14, 4),
        (nh, alen),
        (16, 4),
        (17, 4),
    ];
    match protocol {
        EncodeProtocol::Ipfix => f.extend([(152, 8), (153, 8)]),
        _ => f.extend([(22, 4), (21, 4)]),
    }
    f
}

/// Serialise one record in the [`template_fields`] layout.
fn encode_record(
    b: &mut Vec<u8>,
    r: &FlowRecord,
    protocol: EncodeProtocol,
    ipv6: bool,
    boot_ms: i64,
) {
    b.extend_from_slice(&r.bytes.to_be_bytes());
    b.extend_from_slice(&(r.packets as u32).to_be_bytes());
    b.push(r.proto);
    b.push(r.tos);
    b.push(r.tcp_flags);
    b.extend_from_slice(&r.src_port.to_be_bytes());
    b.extend_from_slice(&addr_bytes(r.src_addr, ipv6));
    b.push(r.src_mask);
    b.extend_from_slice(&r.input_if.to_be_bytes());
    b.extend_from_slice(&r.dst_port.to_be_bytes());
    b.extend_from_slice(&addr_bytes(r.dst_addr, ipv6));
    b.push(r.dst_mask);
    b.extend_from_slice(&r.output_if.to_be_bytes());
    let nh = r.next_hop.unwrap_or(if ipv6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    });
    b.extend_from_slice(&addr_bytes(nh, ipv6));
    b.extend_from_slice(&r.src_as.to_be_bytes());
    b.extend_from_slice(&r.dst_as.to_be_bytes());
    match protocol {
        EncodeProtocol::Ipfix => {
            b.extend_from_slice(&(r.start_ms as u64).to_be_bytes());
            b.extend_from_slice(&(r.end_ms as u64).to_be_bytes());
        }
        _ => {
            b.extend_from_slice(&uptime_of(boot_ms, r.start_ms).to_be_bytes());
            b.extend_from_slice(&uptime_of(boot_ms, r.end_ms).to_be_bytes());
        }
    }
}

/// A v9 or IPFIX exporter: one source id / observation domain, one template.
#[derive(Debug, Clone)]
pub struct TemplateExporter {
    pub protocol: EncodeProtocol,
    pub ipv6: bool,
    pub source_id: u32,
    pub template_id: u16,
    pub boot_ms: i64,
    /// v9: packets sent; IPFIX: data records sent.
    pub sequence: u32,
}

impl TemplateExporter {
    pub fn new(protocol: EncodeProtocol, ipv6: bool, source_id: u32, boot_ms: i64) -> Self {
        TemplateExporter {
            protocol,
            ipv6,
            source_id,
            template_id: 256,
            boot_ms,
            sequence: 0,
        }
    }

    /// One datagram carrying the template (when asked) and a data set with `records`.
    pub fn datagram(
        &mut self,
        now_ms: i64,
        records: &[FlowRecord],
        with_template: bool,
    ) -> Vec<u8> {
        let fields = template_fields(self.protocol, self.ipv6);
        let ipfix = self.protocol == EncodeProtocol::Ipfix;
        let mut b = Vec::with_capacity(1500);
        let header_len = if ipfix { 16 } else { 20 };
        b.resize(header_len, 0);
        if with_template {
            let set_start = b.len();
            b.extend_from_slice(&(if ipfix { 2u16 } else { 0u16 }).to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&self.template_id.to_be_bytes());
            b.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (id, len) in &fields {
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
            }
            let set_len = (b.len() - set_start) as u16;
            b[set_start + 2..set_start + 4].copy_from_slice(&set_len.to_be_bytes());
        }
        if !records.is_empty() {
            let set_start = b.len();
            b.extend_from_slice(&self.template_id.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            for r in records {
                encode_record(&mut b, r, self.protocol, self.ipv6, self.boot_ms);
            }
            while (b.len() - set_start) % 4 != 0 {
                b.push(0);
            }
            let set_len = (b.len() - set_start) as u16;
            b[set_start + 2..set_start + 4].copy_from_slice(&set_len.to_be_bytes());
        }
        let unix_secs = (now_ms / 1000) as u32;
        if ipfix {
            let len = b.len() as u16;
            b[0..2].copy_from_slice(&10u16.to_be_bytes());
            b[2..4].copy_from_slice(&len.to_be_bytes());
            b[4..8].copy_from_slice(&unix_secs.to_be_bytes());
            b[8..12].copy_from_slice(&self.sequence.to_be_bytes());
            b[12..16].copy_from_slice(&self.source_id.to_be_bytes());
            self.sequence = self.sequence.wrapping_add(records.len() as u32);
        } else {
            let count = records.len() as u16 + u16::from(with_template);
            let uptime = uptime_of(self.boot_ms, now_ms);
            b[0..2].copy_from_slice(&9u16.to_be_bytes());
            b[2..4].copy_from_slice(&count.to_be_bytes());
            b[4..8].copy_from_slice(&uptime.to_be_bytes());
            b[8..12].copy_from_slice(&unix_secs.to_be_bytes());
            b[12..16].copy_from_slice(&self.sequence.to_be_bytes());
            b[16..20].copy_from_slice(&self.source_id.to_be_bytes());
            self.sequence = self.sequence.wrapping_add(1);
        }
        b
    }
}
