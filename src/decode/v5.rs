//! NetFlow v5: a fixed 24-byte header and fixed 48-byte records.

use std::net::{IpAddr, Ipv4Addr};

use super::{be, DecodeError, FlowRecord, PacketSummary, Protocol};

pub const HEADER_LEN: usize = 24;
pub const RECORD_LEN: usize = 48;

/// Sampling from the header's `sampling_interval`: two mode bits and a 14-bit interval.
/// Some exporters leave the mode bits 0 while filling the interval, so any non-zero
/// interval counts.
pub fn sampling_rate(sampling_interval: u16) -> u32 {
    u32::from(sampling_interval & 0x3fff).max(1)
}

pub fn decode(datagram: &[u8], out: &mut Vec<FlowRecord>) -> Result<PacketSummary, DecodeError> {
    let truncated = || DecodeError::TruncatedHeader {
        what: "NetFlow v5",
        len: datagram.len(),
        need: HEADER_LEN,
    };
    if datagram.len() < HEADER_LEN {
        return Err(truncated());
    }
    let count = be::u16_at(datagram, 2).ok_or_else(truncated)?;
    let sys_uptime = be::u32_at(datagram, 4).ok_or_else(truncated)?;
    let unix_secs = be::u32_at(datagram, 8).ok_or_else(truncated)?;
    let unix_nsecs = be::u32_at(datagram, 12).ok_or_else(truncated)?;
    let sequence = be::u32_at(datagram, 16).ok_or_else(truncated)?;
    let engine_type = be::u8_at(datagram, 20).ok_or_else(truncated)?;
    let engine_id = be::u8_at(datagram, 21).ok_or_else(truncated)?;
    let sampling = be::u16_at(datagram, 22).ok_or_else(truncated)?;

    let body = &datagram[HEADER_LEN..];
    let fits = body.len() / RECORD_LEN;
    if usize::from(count) > fits {
        return Err(DecodeError::RecordCountMismatch {
            count,
            len: datagram.len(),
            fits,
        });
    }
    let rate = sampling_rate(sampling);
    // Export time in ms; record times are uptime offsets from it.
    let export_ms = i64::from(unix_secs) * 1000 + i64::from(unix_nsecs / 1_000_000);
    let to_unix = |uptime: u32| export_ms - i64::from(sys_uptime.wrapping_sub(uptime) as i32);

    out.reserve(usize::from(count));
    for rec in body.chunks_exact(RECORD_LEN).take(usize::from(count)) {
        let r = |at: usize| u32::from_be_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
        let h = |at: usize| u16::from_be_bytes([rec[at], rec[at + 1]]);
        let next_hop = r(8);
        let proto = rec[38];
        let dst_port = h(34);
        out.push(FlowRecord {
            src_addr: IpAddr::V4(Ipv4Addr::from(r(0))),
            dst_addr: IpAddr::V4(Ipv4Addr::from(r(4))),
            next_hop: (next_hop != 0).then(|| IpAddr::V4(Ipv4Addr::from(next_hop))),
            input_if: u32::from(h(12)),
            output_if: u32::from(h(14)),
            packets: u64::from(r(16)),
            bytes: u64::from(r(20)),
            start_ms: to_unix(r(24)),
            end_ms: to_unix(r(28)),
            src_port: h(32),
            dst_port,
            tcp_flags: rec[37],
            proto,
            tos: rec[39],
            src_as: u32::from(h(40)),
            dst_as: u32::from(h(42)),
            src_mask: rec[44],
            dst_mask: rec[45],
            // v5 carries ICMP type/code in the destination port.
            icmp_type_code: (proto == 1).then_some(dst_port),
            sampling_rate: rate,
            ..FlowRecord::default()
        });
    }
    Ok(PacketSummary {
        protocol: Protocol::NetflowV5,
        source_id: (u32::from(engine_type) << 8) | u32::from(engine_id),
        sequence,
        sequence_advance: Some(u32::from(count)),
        sys_uptime_ms: Some(sys_uptime),
        records: usize::from(count),
        held_sets: 0,
        set_errors: Vec::new(),
    })
}
