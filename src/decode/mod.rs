//! Flow export decoding: NetFlow v5, NetFlow v9 (RFC 3954), IPFIX (RFC 7011/7012) and
//! sFlow v5 datagrams into normalised [`FlowRecord`]s (and sFlow's interface counters
//! into [`InterfaceCounters`]).
//!
//! Everything here is pure: no I/O, no clocks (the caller passes `now`), no panics and
//! no unbounded allocation. Every length read from a datagram is treated as hostile.
//! Template state lives in a [`Decoder`], scoped per exporter address + source id
//! (v9) or observation domain (IPFIX), and bounded by [`Limits`].

mod fields;
mod ipfix;
mod plan;
mod sflow;
mod state;
mod v5;
mod v9;

use std::net::{IpAddr, Ipv4Addr};

pub use plan::MAX_TEMPLATE_FIELDS;
pub use sflow::InterfaceCounters;
pub use state::{Decoder, ExpiredPending, Limits, ScopeKey};
pub use v5::sampling_rate as v5_sampling_rate;

/// One flow as every protocol is normalised to. Counters are as exported (unsampled);
/// [`FlowRecord::sampling_rate`] says by how much to scale them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    pub next_hop: Option<IpAddr>,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub tos: u8,
    pub tcp_flags: u8,
    pub src_mask: u8,
    pub dst_mask: u8,
    pub input_if: u32,
    pub output_if: u32,
    pub src_as: u32,
    pub dst_as: u32,
    pub src_vlan: Option<u16>,
    pub dst_vlan: Option<u16>,
    /// ICMP type * 256 + code, for ICMP and ICMPv6 flows when the exporter sent it.
    pub icmp_type_code: Option<u16>,
    pub bytes: u64,
    pub packets: u64,
    /// Flows this record stands for (deltaFlowCount, usually 1).
    pub flows: u64,
    /// 1 when unsampled; N means one packet in N was seen.
    pub sampling_rate: u32,
    /// Flow start and end, Unix milliseconds.
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Default for FlowRecord {
    fn default() -> Self {
        Self {
            src_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            next_hop: None,
            src_port: 0,
            dst_port: 0,
            proto: 0,
            tos: 0,
            tcp_flags: 0,
            src_mask: 0,
            dst_mask: 0,
            input_if: 0,
            output_if: 0,
            src_as: 0,
            dst_as: 0,
            src_vlan: None,
            dst_vlan: None,
            icmp_type_code: None,
            bytes: 0,
            packets: 0,
            flows: 1,
            sampling_rate: 1,
            start_ms: 0,
            end_ms: 0,
        }
    }
}

impl FlowRecord {
    /// DSCP, the upper six bits of the TOS byte.
    pub fn dscp(&self) -> u8 {
        self.tos >> 2
    }

    /// Bytes scaled by the sampling rate.
    pub fn scaled_bytes(&self) -> u64 {
        self.bytes
            .saturating_mul(u64::from(self.sampling_rate.max(1)))
    }

    /// Packets scaled by the sampling rate.
    pub fn scaled_packets(&self) -> u64 {
        self.packets
            .saturating_mul(u64::from(self.sampling_rate.max(1)))
    }
}

/// Which protocol a datagram carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    NetflowV5,
    NetflowV9,
    Ipfix,
    Sflow,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::NetflowV5 => "v5",
            Protocol::NetflowV9 => "v9",
            Protocol::Ipfix => "ipfix",
            Protocol::Sflow => "sflow",
        }
    }
}

/// What the decoder learned from one datagram's header, for the collector's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketSummary {
    pub protocol: Protocol,
    /// v5: engine type << 8 | engine id; v9: source id; IPFIX: observation domain;
    /// sFlow: sub-agent id.
    pub source_id: u32,
    pub sequence: u32,
    /// How far the next datagram's sequence number should advance, in the protocol's
    /// own unit (v5 flows, v9 and sFlow datagrams, IPFIX data records); `None` when not known
    /// (IPFIX data held for a missing template, or a data set that failed to decode).
    pub sequence_advance: Option<u32>,
    /// Exporter uptime in ms where the header carries it (restart detection).
    pub sys_uptime_ms: Option<u32>,
    /// Flow records appended to the output, including held data released now.
    pub records: usize,
    /// Data sets held because their template is not known yet.
    pub held_sets: usize,
    /// Problems confined to one set; the rest of the datagram was decoded.
    pub set_errors: Vec<DecodeError>,
}

/// Why a datagram, or one set in it, could not be decoded. Messages quote the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {len} bytes is shorter than the {need}-byte {what} header")]
    TruncatedHeader {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown export version {0}")]
    UnknownVersion(u16),
    #[error("NetFlow v5 header announces {count} records but {len} bytes hold only {fits}")]
    RecordCountMismatch { count: u16, len: usize, fits: usize },
    #[error("IPFIX message length {length} does not fit the {len}-byte datagram")]
    MessageLength { length: u16, len: usize },
    #[error("set {set_id} at offset {offset} has length {length}, but {remaining} bytes remain")]
    SetLength {
        set_id: u16,
        offset: usize,
        length: u16,
        remaining: usize,
    },
    #[error("template {template_id} has no fields")]
    EmptyTemplate { template_id: u16 },
    #[error("template {template_id} declares {count} fields; the limit is {max}")]
    TooManyFields {
        template_id: u16,
        count: usize,
        max: usize,
    },
    #[error("template {template_id} field {field_type} has length 0")]
    ZeroLengthField { template_id: u16, field_type: u16 },
    #[error("template id {template_id} is reserved (must be 256 or more)")]
    ReservedTemplateId { template_id: u16 },
    #[error("template {template_id} runs past the end of its set")]
    TemplateOverrun { template_id: u16 },
    #[error("template {template_id} record length {length} exceeds the 65535-byte limit")]
    RecordTooLong { template_id: u16, length: usize },
    #[error("options template {template_id} scope length {scope_len} is invalid")]
    BadScope { template_id: u16, scope_len: usize },
    #[error("variable-length field in template {template_id} overruns its set at offset {offset}")]
    VariableLengthOverrun { template_id: u16, offset: usize },
    #[error("data set for template {template_id}, which the exporter withdrew")]
    WithdrawnTemplate { template_id: u16 },
    #[error("template cache full ({max} templates); template {template_id} dropped")]
    TemplateCacheFull { template_id: u16, max: usize },
    #[error("sFlow version {0} is not supported (only version 5 is)")]
    SflowVersion(u32),
    #[error("sFlow address type {address_type} is neither 1 (IPv4) nor 2 (IPv6)")]
    SflowAddressType { address_type: u32 },
    #[error("sFlow datagram announces {count} samples but holds only {found}")]
    SflowSampleCount { count: u32, found: u32 },
    #[error(
        "sFlow sample {index} (format {format}) has length {length}, but {remaining} bytes remain"
    )]
    SflowSampleLength {
        index: u32,
        format: u32,
        length: u32,
        remaining: usize,
    },
    #[error("sFlow sample format {format} of {length} bytes is too short for its fields")]
    SflowSampleShort { format: u32, length: usize },
    #[error(
        "sFlow sample format {sample_format} announces {count} records but holds only {found}"
    )]
    SflowRecordCount {
        sample_format: u32,
        count: u32,
        found: u32,
    },
    #[error("sFlow record format {format} in sample format {sample_format} has length {length}, but {remaining} bytes remain")]
    SflowRecordLength {
        sample_format: u32,
        format: u32,
        length: u32,
        remaining: usize,
    },
    #[error("sFlow record format {format} of {length} bytes is too short for its fields")]
    SflowRecordShort { format: u32, length: usize },
}

impl DecodeError {
    /// Stable short name, used as the `kind` label of the decode error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TruncatedHeader { .. } => "truncated_header",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::RecordCountMismatch { .. } => "record_count",
            DecodeError::MessageLength { .. } => "message_length",
            DecodeError::SetLength { .. } => "set_length",
            DecodeError::EmptyTemplate { .. } => "empty_template",
            DecodeError::TooManyFields { .. } => "too_many_fields",
            DecodeError::ZeroLengthField { .. } => "zero_length_field",
            DecodeError::ReservedTemplateId { .. } => "reserved_template_id",
            DecodeError::TemplateOverrun { .. } => "template_overrun",
            DecodeError::RecordTooLong { .. } => "record_too_long",
            DecodeError::BadScope { .. } => "bad_scope",
            DecodeError::VariableLengthOverrun { .. } => "varlen_overrun",
            DecodeError::WithdrawnTemplate { .. } => "withdrawn_template",
            DecodeError::TemplateCacheFull { .. } => "template_cache_full",
            DecodeError::SflowVersion(_) => "unknown_version",
            DecodeError::SflowAddressType { .. } => "sflow_address_type",
            DecodeError::SflowSampleCount { .. } => "sflow_sample_count",
            DecodeError::SflowSampleLength { .. } => "sflow_sample_length",
            DecodeError::SflowSampleShort { .. } => "sflow_sample_short",
            DecodeError::SflowRecordCount { .. } => "sflow_record_count",
            DecodeError::SflowRecordLength { .. } => "sflow_record_length",
            DecodeError::SflowRecordShort { .. } => "sflow_record_short",
        }
    }
}

/// Big-endian readers that never panic: a short slice reads as `None`.
pub(crate) mod be {
    #[inline]
    pub fn u8_at(b: &[u8], at: usize) -> Option<u8> {
        b.get(at).copied()
    }
    #[inline]
    pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        let s = b.get(at..at.checked_add(2)?)?;
        Some(u16::from_be_bytes([s[0], s[1]]))
    }
    #[inline]
    pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        let s = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    /// An unsigned integer of 1..=8 bytes (exporters use reduced-size encoding freely);
    /// longer fields keep their low 8 bytes.
    #[inline]
    pub fn uint(s: &[u8]) -> u64 {
        match s.len() {
            1 => u64::from(s[0]),
            2 => u64::from(u16::from_be_bytes([s[0], s[1]])),
            4 => u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
            8 => u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
            _ => {
                let tail = &s[s.len().saturating_sub(8)..];
                tail.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
            }
        }
    }
}

/// Decode one datagram from `exporter`. `now_ms` is the receive time (Unix ms), used for
/// ageing held data and as the time of sFlow samples; `out` receives the records. On
/// `Err` nothing was appended and no template state changed. sFlow interface counters
/// are dropped; see [`decode_datagram_with_counters`].
pub fn decode_datagram(
    decoder: &mut Decoder,
    exporter: IpAddr,
    now_ms: i64,
    datagram: &[u8],
    out: &mut Vec<FlowRecord>,
) -> Result<PacketSummary, DecodeError> {
    decode_datagram_with_counters(decoder, exporter, now_ms, datagram, out, &mut Vec::new())
}

/// [`decode_datagram`], and sFlow counter samples' generic interface counters appended
/// to `counters` (on `Err`, nothing was appended there either).
pub fn decode_datagram_with_counters(
    decoder: &mut Decoder,
    exporter: IpAddr,
    now_ms: i64,
    datagram: &[u8],
    out: &mut Vec<FlowRecord>,
    counters: &mut Vec<InterfaceCounters>,
) -> Result<PacketSummary, DecodeError> {
    let version = be::u16_at(datagram, 0).ok_or(DecodeError::TruncatedHeader {
        what: "version",
        len: datagram.len(),
        need: 2,
    })?;
    match version {
        5 => v5::decode(datagram, out),
        9 => v9::decode(decoder, exporter, now_ms, datagram, out),
        10 => ipfix::decode(decoder, exporter, now_ms, datagram, out),
        // sFlow's version is a u32: its first u16 is 0. Versions 2 and 4 are older sFlow.
        0 => match be::u32_at(datagram, 0) {
            Some(sflow::VERSION) => sflow::decode(now_ms, datagram, out, counters),
            Some(v @ (2 | 4)) => Err(DecodeError::SflowVersion(v)),
            _ => Err(DecodeError::UnknownVersion(0)),
        },
        other => Err(DecodeError::UnknownVersion(other)),
    }
}
