//! Templates compiled into decode plans. A template is parsed once into a list of
//! (offset, length, target) operations; each data record then costs one pass over the
//! fields it actually uses, with no per-record lookups. Templates with variable-length
//! fields fall back to a sequential walk.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::be;
use super::fields::Target;
use super::FlowRecord;

/// Upper bound on fields per template; real exporters stay well below 150.
pub const MAX_TEMPLATE_FIELDS: usize = 512;

/// IPFIX marks a variable-length field with this length.
pub(crate) const VARIABLE_LENGTH: u16 = 0xffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FieldSpec {
    pub length: u16,
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    offset: usize,
    length: usize,
    target: Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlanKind {
    Data,
    Options,
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub kind: PlanKind,
    fields: Vec<FieldSpec>,
    ops: Vec<Op>,
    /// `Some` when every field has a fixed length.
    fixed_len: Option<usize>,
    /// Smallest possible record: fixed lengths plus one length byte per variable field.
    pub min_len: usize,
}

impl Plan {
    /// Compile a field list. The caller has checked that the list is non-empty, bounded
    /// and has no zero-length field.
    pub fn compile(kind: PlanKind, fields: Vec<FieldSpec>) -> Plan {
        let mut ops = Vec::new();
        let mut offset = 0usize;
        let mut fixed = true;
        let mut min_len = 0usize;
        for f in &fields {
            if f.length == VARIABLE_LENGTH {
                fixed = false;
                min_len += 1;
                continue;
            }
            let length = usize::from(f.length);
            if let Some(target) = f.target {
                ops.push(Op {
                    offset,
                    length,
                    target,
                });
            }
            offset += length;
            min_len += length;
        }
        Plan {
            kind,
            fixed_len: fixed.then_some(offset),
            ops: if fixed { ops } else { Vec::new() },
            fields,
            min_len: min_len.max(1),
        }
    }

    /// Decode the records of one set body, calling `emit` for each. Trailing bytes
    /// shorter than a record are padding. Returns `Err(offset)` when a variable-length
    /// field overruns the set; records already emitted stay emitted, so callers that need
    /// set atomicity truncate their output.
    pub fn for_each_record(
        &self,
        body: &[u8],
        mut emit: impl FnMut(&Fields),
    ) -> Result<usize, usize> {
        let mut count = 0;
        if let Some(len) = self.fixed_len {
            for rec in body.chunks_exact(len) {
                let mut f = Fields::default();
                for op in &self.ops {
                    if let Some(v) = rec.get(op.offset..op.offset + op.length) {
                        f.apply(op.target, v);
                    }
                }
                emit(&f);
                count += 1;
            }
            return Ok(count);
        }
        let mut at = 0usize;
        while body.len().saturating_sub(at) >= self.min_len {
            let mut f = Fields::default();
            for spec in &self.fields {
                let length = if spec.length == VARIABLE_LENGTH {
                    let first = be::u8_at(body, at).ok_or(at)?;
                    at += 1;
                    if first == 255 {
                        let long = be::u16_at(body, at).ok_or(at)?;
                        at += 2;
                        usize::from(long)
                    } else {
                        usize::from(first)
                    }
                } else {
                    usize::from(spec.length)
                };
                let value = body.get(at..at + length).ok_or(at)?;
                if let Some(target) = spec.target {
                    f.apply(target, value);
                }
                at += length;
            }
            emit(&f);
            count += 1;
        }
        Ok(count)
    }
}

/// Values of one record as read, before time and sampling are resolved.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub rec: FlowRecord,
    bytes_alt: u64,
    packets_alt: u64,
    have_bytes: bool,
    have_packets: bool,
    bgp_next_hop: Option<IpAddr>,
    pub first_uptime: Option<u32>,
    pub last_uptime: Option<u32>,
    pub start_abs_ms: Option<i64>,
    pub end_abs_ms: Option<i64>,
    pub start_delta_us: Option<u64>,
    pub end_delta_us: Option<u64>,
    pub duration_ms: Option<u64>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    dot1q_vlan: Option<u16>,
    pub sampling_interval: Option<u64>,
    pub sampler_id: Option<u64>,
    pub random_interval: Option<u64>,
    pub packet_interval: Option<u64>,
    pub packet_space: Option<u64>,
    pub system_init_ms: Option<i64>,
}

/// Seconds between the NTP era (1900) and the Unix epoch.
const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

fn ntp_to_unix_ms(v: u64) -> i64 {
    let secs = (v >> 32) as i64 - NTP_UNIX_OFFSET;
    let frac_ms = ((v & 0xffff_ffff) * 1000) >> 32;
    secs * 1000 + frac_ms as i64
}

fn addr(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(v);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

fn sat_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Fields {
    #[inline(always)]
    fn apply(&mut self, target: Target, v: &[u8]) {
        let r = &mut self.rec;
        match target {
            Target::Bytes => {
                r.bytes = be::uint(v);
                self.have_bytes = true;
            }
            Target::Packets => {
                r.packets = be::uint(v);
                self.have_packets = true;
            }
            Target::BytesAlt => self.bytes_alt = be::uint(v),
            Target::PacketsAlt => self.packets_alt = be::uint(v),
            Target::Flows => r.flows = be::uint(v),
            Target::Proto => r.proto = be::uint(v) as u8,
            Target::Tos => r.tos = be::uint(v) as u8,
            Target::Dscp => r.tos = (be::uint(v) as u8) << 2,
            Target::TcpFlags => r.tcp_flags = be::uint(v) as u8,
            Target::SrcPort => r.src_port = be::uint(v) as u16,
            Target::DstPort => r.dst_port = be::uint(v) as u16,
            Target::SrcAddr => {
                if let Some(a) = addr(v) {
                    r.src_addr = a;
                }
            }
            Target::DstAddr => {
                if let Some(a) = addr(v) {
                    r.dst_addr = a;
                }
            }
            Target::NextHop => r.next_hop = addr(v).or(r.next_hop),
            Target::BgpNextHop => self.bgp_next_hop = addr(v),
            Target::SrcMask => r.src_mask = be::uint(v) as u8,
            Target::DstMask => r.dst_mask = be::uint(v) as u8,
            Target::InputIf => r.input_if = be::uint(v) as u32,
            Target::OutputIf => r.output_if = be::uint(v) as u32,
            Target::SrcAs => r.src_as = be::uint(v) as u32,
            Target::DstAs => r.dst_as = be::uint(v) as u32,
            Target::FirstUptime => self.first_uptime = Some(be::uint(v) as u32),
            Target::LastUptime => self.last_uptime = Some(be::uint(v) as u32),
            Target::StartSec => self.start_abs_ms = Some(sat_i64(be::uint(v)).saturating_mul(1000)),
            Target::EndSec => self.end_abs_ms = Some(sat_i64(be::uint(v)).saturating_mul(1000)),
            Target::StartMs => self.start_abs_ms = Some(sat_i64(be::uint(v))),
            Target::EndMs => self.end_abs_ms = Some(sat_i64(be::uint(v))),
            Target::StartNtp => self.start_abs_ms = Some(ntp_to_unix_ms(be::uint(v))),
            Target::EndNtp => self.end_abs_ms = Some(ntp_to_unix_ms(be::uint(v))),
            Target::StartDeltaUs => self.start_delta_us = Some(be::uint(v)),
            Target::EndDeltaUs => self.end_delta_us = Some(be::uint(v)),
            Target::DurationMs => self.duration_ms = Some(be::uint(v)),
            Target::DurationUs => self.duration_ms = Some(be::uint(v) / 1000),
            Target::IcmpTypeCode => r.icmp_type_code = Some(be::uint(v) as u16),
            Target::IcmpType => self.icmp_type = Some(be::uint(v) as u8),
            Target::IcmpCode => self.icmp_code = Some(be::uint(v) as u8),
            Target::SrcVlan => r.src_vlan = Some(be::uint(v) as u16),
            Target::DstVlan => r.dst_vlan = Some(be::uint(v) as u16),
            Target::Dot1qVlan => self.dot1q_vlan = Some(be::uint(v) as u16),
            Target::SamplingInterval => self.sampling_interval = Some(be::uint(v)),
            Target::SamplerId => self.sampler_id = Some(be::uint(v)),
            Target::SamplerRandomInterval => self.random_interval = Some(be::uint(v)),
            Target::SamplingPacketInterval => self.packet_interval = Some(be::uint(v)),
            Target::SamplingPacketSpace => self.packet_space = Some(be::uint(v)),
            Target::SystemInitMs => self.system_init_ms = Some(sat_i64(be::uint(v))),
        }
    }

    /// The sampling rate this record states itself, if any.
    pub fn own_sampling_rate(&self) -> Option<u32> {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        if let Some(i) = self.sampling_interval.filter(|&i| i > 0) {
            return Some(clamp(i));
        }
        if let Some(i) = self.random_interval.filter(|&i| i > 0) {
            return Some(clamp(i));
        }
        if let Some(i) = self.packet_interval.filter(|&i| i > 0) {
            let space = self.packet_space.unwrap_or(0);
            return Some(clamp(i.saturating_add(space) / i));
        }
        None
    }
}

/// What a record's relative times are measured against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeBase {
    /// Export time of the datagram, Unix ms.
    pub export_ms: i64,
    /// v9 header uptime, for FIRST/LAST_SWITCHED.
    pub sys_uptime_ms: Option<u32>,
    /// IPFIX systemInitTimeMilliseconds learned from options data.
    pub system_init_ms: Option<i64>,
}

impl Fields {
    /// Resolve times, fallbacks and sampling into the final record.
    pub fn finish(&self, base: TimeBase, sampling_rate: u32) -> FlowRecord {
        let mut r = self.rec;
        if !self.have_bytes {
            r.bytes = self.bytes_alt;
        }
        if !self.have_packets {
            r.packets = self.packets_alt;
        }
        if r.next_hop.is_none() {
            r.next_hop = self.bgp_next_hop;
        }
        if r.src_vlan.is_none() {
            r.src_vlan = self.dot1q_vlan;
        }
        if r.icmp_type_code.is_none() && (self.icmp_type.is_some() || self.icmp_code.is_some()) {
            r.icmp_type_code = Some(
                (u16::from(self.icmp_type.unwrap_or(0)) << 8)
                    | u16::from(self.icmp_code.unwrap_or(0)),
            );
        }
        let uptime_to_unix = |uptime: u32| -> Option<i64> {
            if let Some(sys) = base.sys_uptime_ms {
                Some(base.export_ms - i64::from(sys.wrapping_sub(uptime) as i32))
            } else {
                base.system_init_ms
                    .map(|init| init.saturating_add(i64::from(uptime)))
            }
        };
        let delta = |us: u64| base.export_ms - sat_i64(us / 1000);
        let start = self
            .start_abs_ms
            .or_else(|| self.first_uptime.and_then(uptime_to_unix))
            .or_else(|| self.start_delta_us.map(delta));
        let end = self
            .end_abs_ms
            .or_else(|| self.last_uptime.and_then(uptime_to_unix))
            .or_else(|| self.end_delta_us.map(delta));
        let duration = self.duration_ms.map(sat_i64);
        let (start, end) = match (start, end, duration) {
            (Some(s), Some(e), _) => (s, e),
            (Some(s), None, Some(d)) => (s, s.saturating_add(d)),
            (None, Some(e), Some(d)) => (e.saturating_sub(d), e),
            (Some(s), None, None) => (s, s),
            (None, Some(e), None) => (e, e),
            (None, None, _) => (base.export_ms, base.export_ms),
        };
        r.start_ms = start;
        r.end_ms = end;
        r.sampling_rate = sampling_rate.max(1);
        r
    }
}
