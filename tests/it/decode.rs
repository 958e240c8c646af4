//! Integration tests for `flowstage::decode`: hand-built NetFlow v5, NetFlow v9 and
//! IPFIX datagrams decoded to exact values, malformed input, held data, and a seeded
//! mutation loop over valid datagrams from `flowstage::encode`.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowstage::decode::{
    decode_datagram, v5_sampling_rate, DecodeError, Decoder, ExpiredPending, FlowRecord, Limits,
    PacketSummary, Protocol, ScopeKey, MAX_TEMPLATE_FIELDS,
};
use flowstage::encode::{encode_v5, EncodeProtocol, TemplateExporter, V5Header};
use flowstage::gen::{SplitMix64, TrafficModel};

// ---------------------------------------------------------------------------------------
// Byte builder and datagram helpers
// ---------------------------------------------------------------------------------------

/// Big-endian byte builder.
#[derive(Debug, Default, Clone)]
struct Buf(Vec<u8>);

impl Buf {
    fn new() -> Self {
        Buf::default()
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn ip(self, a: IpAddr) -> Self {
        match a {
            IpAddr::V4(v) => self.raw(&v.octets()),
            IpAddr::V6(v) => self.raw(&v.octets()),
        }
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A v9 flowset / IPFIX set: id, length (header included), body.
fn set(id: u16, body: &[u8]) -> Vec<u8> {
    Buf::new()
        .u16(id)
        .u16((body.len() + 4) as u16)
        .raw(body)
        .done()
}

/// A template record (v9 and IPFIX share the layout for enterprise-0 fields).
fn template(id: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut b = Buf::new().u16(id).u16(fields.len() as u16);
    for &(t, l) in fields {
        b = b.u16(t).u16(l);
    }
    b.done()
}

/// A v9 options template record: scope and option lengths are in bytes.
fn v9_options_template(id: u16, scope: &[(u16, u16)], options: &[(u16, u16)]) -> Vec<u8> {
    let mut b = Buf::new()
        .u16(id)
        .u16((scope.len() * 4) as u16)
        .u16((options.len() * 4) as u16);
    for &(t, l) in scope.iter().chain(options) {
        b = b.u16(t).u16(l);
    }
    b.done()
}

/// An IPFIX options template record: the first `scope_count` fields are scope fields.
fn ipfix_options_template(id: u16, scope_count: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut b = Buf::new().u16(id).u16(fields.len() as u16).u16(scope_count);
    for &(t, l) in fields {
        b = b.u16(t).u16(l);
    }
    b.done()
}

fn v9_packet(
    uptime: u32,
    unix_secs: u32,
    sequence: u32,
    source_id: u32,
    sets: &[Vec<u8>],
) -> Vec<u8> {
    Buf::new()
        .u16(9)
        .u16(sets.len() as u16)
        .u32(uptime)
        .u32(unix_secs)
        .u32(sequence)
        .u32(source_id)
        .raw(&sets.concat())
        .done()
}

fn ipfix_msg(export_secs: u32, sequence: u32, domain: u32, sets: &[Vec<u8>]) -> Vec<u8> {
    let body = sets.concat();
    Buf::new()
        .u16(10)
        .u16((16 + body.len()) as u16)
        .u32(export_secs)
        .u32(sequence)
        .u32(domain)
        .raw(&body)
        .done()
}

/// One NetFlow v5 record, field by field.
#[derive(Debug, Clone, Copy, Default)]
struct V5Rec {
    src: [u8; 4],
    dst: [u8; 4],
    next_hop: [u8; 4],
    input: u16,
    output: u16,
    packets: u32,
    octets: u32,
    first: u32,
    last: u32,
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    proto: u8,
    tos: u8,
    src_as: u16,
    dst_as: u16,
    src_mask: u8,
    dst_mask: u8,
}

impl V5Rec {
    fn bytes(&self) -> Vec<u8> {
        Buf::new()
            .raw(&self.src)
            .raw(&self.dst)
            .raw(&self.next_hop)
            .u16(self.input)
            .u16(self.output)
            .u32(self.packets)
            .u32(self.octets)
            .u32(self.first)
            .u32(self.last)
            .u16(self.src_port)
            .u16(self.dst_port)
            .u8(0xee) // pad1: ignored
            .u8(self.tcp_flags)
            .u8(self.proto)
            .u8(self.tos)
            .u16(self.src_as)
            .u16(self.dst_as)
            .u8(self.src_mask)
            .u8(self.dst_mask)
            .u16(0xeeee) // pad2: ignored
            .done()
    }
}

/// v5 header fields other than version and count.
#[derive(Debug, Clone, Copy, Default)]
struct V5Head {
    uptime: u32,
    secs: u32,
    nsecs: u32,
    sequence: u32,
    engine_type: u8,
    engine_id: u8,
    sampling: u16,
}

fn v5_packet(h: V5Head, count: u16, records: &[V5Rec]) -> Vec<u8> {
    let mut b = Buf::new()
        .u16(5)
        .u16(count)
        .u32(h.uptime)
        .u32(h.secs)
        .u32(h.nsecs)
        .u32(h.sequence)
        .u8(h.engine_type)
        .u8(h.engine_id)
        .u16(h.sampling);
    for r in records {
        b = b.raw(&r.bytes());
    }
    b.done()
}

/// The v9 IPv4 template used by several tests: 45-byte records.
const V4_FIELDS: [(u16, u16); 18] = [
    (8, 4),
    (12, 4),
    (15, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (5, 1),
    (6, 1),
    (9, 1),
    (13, 1),
    (10, 2),
    (14, 2),
    (16, 2),
    (17, 2),
    (2, 4),
    (1, 4),
    (22, 4),
    (21, 4),
];

/// Serialise `r` in the [`V4_FIELDS`] layout with the given uptime stamps.
fn v4_record(r: &FlowRecord, first: u32, last: u32) -> Vec<u8> {
    Buf::new()
        .ip(r.src_addr)
        .ip(r.dst_addr)
        .ip(r.next_hop.unwrap_or(v4(0, 0, 0, 0)))
        .u16(r.src_port)
        .u16(r.dst_port)
        .u8(r.proto)
        .u8(r.tos)
        .u8(r.tcp_flags)
        .u8(r.src_mask)
        .u8(r.dst_mask)
        .u16(r.input_if as u16)
        .u16(r.output_if as u16)
        .u16(r.src_as as u16)
        .u16(r.dst_as as u16)
        .u32(r.packets as u32)
        .u32(r.bytes as u32)
        .u32(first)
        .u32(last)
        .done()
}

const EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const OTHER_EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
/// Receive time used unless a test needs time to pass.
const NOW: i64 = 1_700_000_000_000;

fn decode_from(
    d: &mut Decoder,
    exporter: IpAddr,
    now_ms: i64,
    datagram: &[u8],
) -> (PacketSummary, Vec<FlowRecord>) {
    let mut out = Vec::new();
    let summary = decode_datagram(d, exporter, now_ms, datagram, &mut out)
        .unwrap_or_else(|e| panic!("datagram rejected: {e}"));
    assert_eq!(summary.records, out.len(), "summary.records vs output");
    (summary, out)
}

fn decode(d: &mut Decoder, datagram: &[u8]) -> (PacketSummary, Vec<FlowRecord>) {
    decode_from(d, EXPORTER, NOW, datagram)
}

fn pending_total(d: &Decoder) -> usize {
    d.pending_sets().map(|(_, n)| n).sum()
}

fn sorted_pending(d: &Decoder) -> Vec<(ScopeKey, usize)> {
    let mut v: Vec<_> = d.pending_sets().collect();
    v.sort();
    v
}

/// Decode a datagram that must be rejected, checking that nothing was appended to the
/// output and that the decoder's visible state did not change.
fn decode_err(d: &mut Decoder, datagram: &[u8]) -> DecodeError {
    let sentinel = FlowRecord {
        bytes: 12345,
        ..FlowRecord::default()
    };
    let mut out = vec![sentinel];
    let templates = d.template_count();
    let pending = sorted_pending(d);
    let err = decode_datagram(d, EXPORTER, NOW, datagram, &mut out)
        .expect_err("datagram should have been rejected");
    assert_eq!(out, vec![sentinel], "a rejected datagram appended records");
    assert_eq!(
        d.template_count(),
        templates,
        "a rejected datagram changed templates"
    );
    assert_eq!(
        sorted_pending(d),
        pending,
        "a rejected datagram changed held data"
    );
    err
}

fn v9_scope(source_id: u32) -> ScopeKey {
    ScopeKey {
        exporter: EXPORTER,
        protocol: Protocol::NetflowV9,
        source_id,
    }
}

fn ipfix_scope(domain: u32) -> ScopeKey {
    ScopeKey {
        exporter: EXPORTER,
        protocol: Protocol::Ipfix,
        source_id: domain,
    }
}

fn rates(records: &[FlowRecord]) -> Vec<u32> {
    records.iter().map(|r| r.sampling_rate).collect()
}

// ---------------------------------------------------------------------------------------
// NetFlow v5
// ---------------------------------------------------------------------------------------

#[test]
fn v5_decodes_every_header_and_record_field() {
    let head = V5Head {
        uptime: 3_600_000,
        secs: 1_700_000_000,
        nsecs: 250_000_000,
        sequence: 4242,
        engine_type: 3,
        engine_id: 7,
        sampling: 0x4064, // mode 01, interval 100
    };
    let export_ms = 1_700_000_000_250i64;
    let tcp = V5Rec {
        src: [10, 0, 0, 1],
        dst: [192, 168, 1, 20],
        next_hop: [10, 0, 0, 254],
        input: 3,
        output: 5,
        packets: 12,
        octets: 3456,
        first: 3_540_000,
        last: 3_599_000,
        src_port: 51234,
        dst_port: 443,
        tcp_flags: 0x1b,
        proto: 6,
        tos: 0xb8,
        src_as: 64512,
        dst_as: 65001,
        src_mask: 24,
        dst_mask: 16,
    };
    let icmp = V5Rec {
        src: [10, 0, 0, 2],
        dst: [8, 8, 8, 8],
        next_hop: [0, 0, 0, 0],
        input: 4,
        output: 6,
        packets: 1,
        octets: 84,
        first: 3_599_999,
        last: 3_600_000,
        src_port: 0,
        dst_port: 0x0303, // type 3 (unreachable), code 3 (port)
        tcp_flags: 0,
        proto: 1,
        tos: 0,
        src_as: 0,
        dst_as: 15169,
        src_mask: 8,
        dst_mask: 24,
    };
    let mut d = Decoder::default();
    let (summary, out) = decode(&mut d, &v5_packet(head, 2, &[tcp, icmp]));
    assert_eq!(
        summary,
        PacketSummary {
            protocol: Protocol::NetflowV5,
            source_id: 0x0307,
            sequence: 4242,
            sequence_advance: Some(2),
            sys_uptime_ms: Some(3_600_000),
            records: 2,
            held_sets: 0,
            set_errors: vec![],
        }
    );
    assert_eq!(
        out[0],
        FlowRecord {
            src_addr: v4(10, 0, 0, 1),
            dst_addr: v4(192, 168, 1, 20),
            next_hop: Some(v4(10, 0, 0, 254)),
            src_port: 51234,
            dst_port: 443,
            proto: 6,
            tos: 0xb8,
            tcp_flags: 0x1b,
            src_mask: 24,
            dst_mask: 16,
            input_if: 3,
            output_if: 5,
            src_as: 64512,
            dst_as: 65001,
            src_vlan: None,
            dst_vlan: None,
            icmp_type_code: None,
            bytes: 3456,
            packets: 12,
            flows: 1,
            sampling_rate: 100,
            start_ms: export_ms - 60_000,
            end_ms: export_ms - 1_000,
        }
    );
    assert_eq!(out[0].dscp(), 46);
    assert_eq!(out[0].scaled_bytes(), 345_600);
    assert_eq!(out[0].scaled_packets(), 1_200);
    assert_eq!(
        out[1],
        FlowRecord {
            src_addr: v4(10, 0, 0, 2),
            dst_addr: v4(8, 8, 8, 8),
            next_hop: None,
            src_port: 0,
            dst_port: 0x0303,
            proto: 1,
            src_mask: 8,
            dst_mask: 24,
            input_if: 4,
            output_if: 6,
            dst_as: 15169,
            icmp_type_code: Some(0x0303),
            bytes: 84,
            packets: 1,
            sampling_rate: 100,
            start_ms: export_ms - 1,
            end_ms: export_ms,
            ..FlowRecord::default()
        }
    );
    // v5 keeps no state.
    assert_eq!(d.template_count(), 0);
    assert_eq!(pending_total(&d), 0);
}

#[test]
fn v5_sampling_mode_and_interval_bits() {
    let cases = [
        (0x0000u16, 1u32),
        (0x4064, 100),
        (0x0064, 100), // mode bits 0 but an interval: still sampled
        (0x8005, 5),
        (0xc000, 1), // mode set, interval 0
        (0x3fff, 16_383),
        (0xffff, 16_383),
    ];
    for (raw, rate) in cases {
        assert_eq!(v5_sampling_rate(raw), rate, "raw {raw:#06x}");
        let head = V5Head {
            uptime: 10_000,
            secs: 1_700_000_000,
            sampling: raw,
            ..V5Head::default()
        };
        let rec = V5Rec {
            octets: 1000,
            packets: 2,
            first: 9_000,
            last: 10_000,
            ..V5Rec::default()
        };
        let (_, out) = decode(&mut Decoder::default(), &v5_packet(head, 1, &[rec]));
        assert_eq!(out[0].sampling_rate, rate, "raw {raw:#06x}");
        assert_eq!(out[0].scaled_bytes(), 1000 * u64::from(rate));
    }
}

#[test]
fn v5_uptime_wraparound_and_engine_source_id() {
    let head = V5Head {
        uptime: 1_000,
        secs: 1_700_000_000,
        nsecs: 0,
        engine_type: 0xff,
        engine_id: 0x01,
        ..V5Head::default()
    };
    // The flow started 2 s before the header, before the uptime counter wrapped.
    let rec = V5Rec {
        first: u32::MAX - 999,
        last: 500,
        ..V5Rec::default()
    };
    let (summary, out) = decode(&mut Decoder::default(), &v5_packet(head, 1, &[rec]));
    assert_eq!(summary.source_id, 0xff01);
    assert_eq!(out[0].start_ms, NOW - 2_000);
    assert_eq!(out[0].end_ms, NOW - 500);
}

#[test]
fn v5_record_count_and_truncation() {
    let head = V5Head {
        uptime: 1,
        secs: 1_700_000_000,
        ..V5Head::default()
    };
    let recs = [V5Rec::default(), V5Rec::default()];
    let mut d = Decoder::default();
    // Count larger than the records present.
    assert_eq!(
        decode_err(&mut d, &v5_packet(head, 3, &recs)),
        DecodeError::RecordCountMismatch {
            count: 3,
            len: 24 + 96,
            fits: 2
        }
    );
    // A partial trailing record does not count as one.
    let mut partial = v5_packet(head, 3, &recs);
    partial.extend_from_slice(&[0; 47]);
    assert_eq!(
        decode_err(&mut d, &partial),
        DecodeError::RecordCountMismatch {
            count: 3,
            len: 24 + 96 + 47,
            fits: 2
        }
    );
    // Fewer announced than present: only the announced ones are decoded.
    let (summary, out) = decode(&mut d, &v5_packet(head, 1, &recs));
    assert_eq!(
        (summary.records, out.len(), summary.sequence_advance),
        (1, 1, Some(1))
    );
    // An empty v5 datagram (count 0) is fine.
    let (summary, out) = decode(&mut d, &v5_packet(head, 0, &[]));
    assert_eq!((summary.records, out.len()), (0, 0));
    // Truncated header.
    let header = v5_packet(head, 0, &[]);
    assert_eq!(
        decode_err(&mut d, &header[..23]),
        DecodeError::TruncatedHeader {
            what: "NetFlow v5",
            len: 23,
            need: 24
        }
    );
    assert_eq!(
        decode_err(&mut d, &header[..1]),
        DecodeError::TruncatedHeader {
            what: "version",
            len: 1,
            need: 2
        }
    );
    assert_eq!(
        decode_err(&mut d, &[]),
        DecodeError::TruncatedHeader {
            what: "version",
            len: 0,
            need: 2
        }
    );
}

// ---------------------------------------------------------------------------------------
// NetFlow v9
// ---------------------------------------------------------------------------------------

#[test]
fn v9_template_and_data_in_one_packet_with_padding() {
    let uptime = 7_200_000u32;
    let secs = 1_700_000_100u32;
    let export_ms = i64::from(secs) * 1000;
    let a = FlowRecord {
        src_addr: v4(10, 1, 1, 1),
        dst_addr: v4(10, 2, 2, 2),
        next_hop: Some(v4(10, 0, 0, 1)),
        src_port: 1234,
        dst_port: 80,
        proto: 6,
        tos: 0x20,
        tcp_flags: 0x02,
        src_mask: 24,
        dst_mask: 22,
        input_if: 7,
        output_if: 8,
        src_as: 100,
        dst_as: 200,
        bytes: 1500,
        packets: 10,
        start_ms: export_ms - 60_000,
        end_ms: export_ms - 500,
        ..FlowRecord::default()
    };
    let b = FlowRecord {
        src_addr: v4(172, 16, 5, 9),
        dst_addr: v4(198, 51, 100, 53),
        next_hop: Some(v4(172, 16, 0, 1)),
        src_port: 40000,
        dst_port: 53,
        proto: 17,
        src_mask: 12,
        dst_mask: 24,
        input_if: 65535,
        output_if: 1,
        src_as: 65535,
        dst_as: 1,
        bytes: 4_000_000_000,
        packets: 1,
        start_ms: export_ms - 1,
        end_ms: export_ms,
        ..FlowRecord::default()
    };
    // 2 × 45-byte records + 4-byte header = 94: two bytes of padding.
    let data = Buf::new()
        .raw(&v4_record(&a, uptime - 60_000, uptime - 500))
        .raw(&v4_record(&b, uptime - 1, uptime))
        .zeros(2)
        .done();
    assert_eq!(data.len() + 4, 96);
    let pkt = v9_packet(
        uptime,
        secs,
        77,
        0x0102_0304,
        &[set(0, &template(256, &V4_FIELDS)), set(256, &data)],
    );
    let mut d = Decoder::default();
    let (summary, out) = decode(&mut d, &pkt);
    assert_eq!(
        summary,
        PacketSummary {
            protocol: Protocol::NetflowV9,
            source_id: 0x0102_0304,
            sequence: 77,
            sequence_advance: Some(1),
            sys_uptime_ms: Some(uptime),
            records: 2,
            held_sets: 0,
            set_errors: vec![],
        }
    );
    assert_eq!(out, vec![a, b]);
    assert_eq!(d.template_count(), 1);
}

#[test]
fn v9_several_flowsets_per_packet() {
    let small = [(8u16, 4u16), (12, 4), (1, 4), (2, 4)];
    let rec = |src: IpAddr, bytes: u32| {
        Buf::new()
            .ip(src)
            .ip(v4(10, 9, 9, 9))
            .u32(bytes)
            .u32(1)
            .done()
    };
    let tset = set(
        0,
        &[template(256, &small), template(257, &[(8, 4), (2, 4)])].concat(),
    );
    let oset = set(
        1,
        &Buf::new()
            .raw(&v9_options_template(258, &[(1, 4)], &[(34, 4)]))
            .zeros(2)
            .done(),
    );
    let pkt = v9_packet(
        1_000,
        1_700_000_000,
        1,
        0,
        &[
            tset,
            set(257, &Buf::new().ip(v4(1, 1, 1, 1)).u32(5).done()),
            set(7, &[1, 2, 3, 4]), // reserved flowset id: skipped
            oset,
            set(258, &Buf::new().u32(0).u32(4).done()),
            set(
                256,
                &[rec(v4(2, 2, 2, 2), 100), rec(v4(3, 3, 3, 3), 200)].concat(),
            ),
        ],
    );
    let mut d = Decoder::default();
    let (summary, out) = decode(&mut d, &pkt);
    assert_eq!(summary.set_errors, vec![]);
    assert_eq!(d.template_count(), 3);
    let got: Vec<_> = out
        .iter()
        .map(|r| (r.src_addr, r.bytes, r.packets, r.sampling_rate))
        .collect();
    assert_eq!(
        got,
        vec![
            (v4(1, 1, 1, 1), 0, 5, 1),   // before the options data
            (v4(2, 2, 2, 2), 100, 1, 4), // after it: exporter-wide rate 4
            (v4(3, 3, 3, 3), 200, 1, 4),
        ]
    );
}

#[test]
fn v9_ipv6_wide_fields_vlan_and_icmp() {
    let fields = [
        (27, 16),
        (28, 16),
        (62, 16),
        (7, 2),
        (11, 2),
        (4, 1),
        (5, 1),
        (6, 1),
        (29, 1),
        (30, 1),
        (10, 4),
        (14, 4),
        (16, 4),
        (17, 4),
        (58, 2),
        (59, 2),
        (1, 8),
        (2, 8),
        (3, 4),
        (32, 2),
        (22, 4),
        (21, 4),
    ];
    let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    let nh = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let data = Buf::new()
        .raw(&src.octets())
        .raw(&dst.octets())
        .raw(&nh.octets())
        .u16(0)
        .u16(0)
        .u8(58)
        .u8(0xb8)
        .u8(0x12)
        .u8(48)
        .u8(64)
        .u32(1_000_001)
        .u32(4_000_000_000)
        .u32(4_200_000_000)
        .u32(65_536)
        .u16(100)
        .u16(200)
        .u64(5_000_000_000)
        .u64(4_000_000)
        .u32(3)
        .u16(0x8000) // ICMPv6 echo request
        .u32(u32::MAX - 499) // 1.5 s before the header uptime, across the wrap
        .u32(1_000)
        .done();
    let pkt = v9_packet(
        1_000,
        1_700_000_000,
        9,
        42,
        &[set(0, &template(300, &fields)), set(300, &data)],
    );
    let (_, out) = decode(&mut Decoder::default(), &pkt);
    assert_eq!(
        out,
        vec![FlowRecord {
            src_addr: IpAddr::V6(src),
            dst_addr: IpAddr::V6(dst),
            next_hop: Some(IpAddr::V6(nh)),
            src_port: 0,
            dst_port: 0,
            proto: 58,
            tos: 0xb8,
            tcp_flags: 0x12,
            src_mask: 48,
            dst_mask: 64,
            input_if: 1_000_001,
            output_if: 4_000_000_000,
            src_as: 4_200_000_000,
            dst_as: 65_536,
            src_vlan: Some(100),
            dst_vlan: Some(200),
            icmp_type_code: Some(0x8000),
            bytes: 5_000_000_000,
            packets: 4_000_000,
            flows: 3,
            sampling_rate: 1,
            start_ms: NOW - 1_500,
            end_ms: NOW,
        }]
    );
    assert_eq!(out[0].dscp(), 46);
}

#[test]
fn v9_template_refresh_and_redefinition() {
    let mut d = Decoder::default();
    let old = [(8u16, 4u16), (12, 4), (1, 4)];
    let data_old = Buf::new()
        .ip(v4(1, 1, 1, 1))
        .ip(v4(2, 2, 2, 2))
        .u32(100)
        .done();
    let pkt = |seq, sets: &[Vec<u8>]| v9_packet(1_000, 1_700_000_000, seq, 1, sets);

    let (_, out) = decode(
        &mut d,
        &pkt(1, &[set(0, &template(256, &old)), set(256, &data_old)]),
    );
    assert_eq!(
        (out[0].src_addr, out[0].dst_addr, out[0].bytes),
        (v4(1, 1, 1, 1), v4(2, 2, 2, 2), 100)
    );
    assert_eq!(d.template_count(), 1);

    // Refresh: the same template again.
    let (_, out) = decode(
        &mut d,
        &pkt(2, &[set(0, &template(256, &old)), set(256, &data_old)]),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(d.template_count(), 1);

    // Redefinition: same id, different fields; later data uses the new layout.
    let new = [(1u16, 4u16), (2, 4), (8, 4), (12, 4)];
    let (summary, out) = decode(&mut d, &pkt(3, &[set(0, &template(256, &new))]));
    assert_eq!((summary.records, out.len(), d.template_count()), (0, 0, 1));
    let data_new = Buf::new()
        .u32(500)
        .u32(5)
        .ip(v4(3, 3, 3, 3))
        .ip(v4(4, 4, 4, 4))
        .done();
    let (_, out) = decode(&mut d, &pkt(4, &[set(256, &data_new)]));
    assert_eq!(
        out.iter()
            .map(|r| (r.bytes, r.packets, r.src_addr, r.dst_addr))
            .collect::<Vec<_>>(),
        vec![(500, 5, v4(3, 3, 3, 3), v4(4, 4, 4, 4))]
    );
}

#[test]
fn v9_templates_are_scoped_per_exporter_and_source_id() {
    let mut d = Decoder::default();
    let fields = [(8u16, 4u16), (1, 4)];
    let data = set(256, &Buf::new().ip(v4(10, 0, 0, 1)).u32(64).done());
    let pkt = |source_id, sets: &[Vec<u8>]| v9_packet(1_000, 1_700_000_000, 0, source_id, sets);

    decode(&mut d, &pkt(1, &[set(0, &template(256, &fields))]));
    assert_eq!(d.template_count(), 1);

    // Same template id, other source id: not usable, held.
    let (s, out) = decode(&mut d, &pkt(2, std::slice::from_ref(&data)));
    assert_eq!((s.held_sets, out.len()), (1, 0));
    // Same source id, other exporter address: held too.
    let (s, out) = decode_from(
        &mut d,
        OTHER_EXPORTER,
        NOW,
        &pkt(1, std::slice::from_ref(&data)),
    );
    assert_eq!((s.held_sets, out.len()), (1, 0));
    // IPFIX from the same address and domain 1 is a separate scope as well.
    let (s, out) = decode(
        &mut d,
        &ipfix_msg(1_700_000_000, 0, 1, std::slice::from_ref(&data)),
    );
    assert_eq!((s.held_sets, out.len()), (1, 0));
    // The scope that defined it decodes.
    let (s, out) = decode(&mut d, &pkt(1, std::slice::from_ref(&data)));
    assert_eq!((s.held_sets, out.len(), out[0].bytes), (0, 1, 64));

    let mut expected = vec![
        (v9_scope(2), 1),
        (
            ScopeKey {
                exporter: OTHER_EXPORTER,
                ..v9_scope(1)
            },
            1,
        ),
        (ipfix_scope(1), 1),
    ];
    expected.sort();
    assert_eq!(sorted_pending(&d), expected);

    // Source 2 gets its own template: its held set is released in that call.
    let (s, out) = decode(&mut d, &pkt(2, &[set(0, &template(256, &fields))]));
    assert_eq!(
        (s.records, s.held_sets, out.len(), out[0].bytes),
        (1, 0, 1, 64)
    );
    assert_eq!(d.template_count(), 2);
    assert_eq!(pending_total(&d), 2);
}

#[test]
fn v9_data_before_template_is_held_then_released() {
    let mut d = Decoder::default();
    let uptime1 = 1_000_000u32;
    let secs1 = 1_700_000_000u32;
    let rec = FlowRecord {
        src_addr: v4(10, 0, 0, 1),
        dst_addr: v4(10, 0, 0, 2),
        next_hop: Some(v4(10, 0, 0, 3)),
        proto: 6,
        bytes: 1000,
        packets: 4,
        // Relative to the first packet's header, not the one carrying the template.
        start_ms: i64::from(secs1) * 1000 - 20_000,
        end_ms: i64::from(secs1) * 1000 - 10_000,
        ..FlowRecord::default()
    };
    let data = set(
        256,
        &[
            v4_record(&rec, uptime1 - 20_000, uptime1 - 10_000),
            v4_record(&rec, uptime1 - 20_000, uptime1 - 10_000),
        ]
        .concat(),
    );
    let (s, out) = decode(&mut d, &v9_packet(uptime1, secs1, 10, 5, &[data]));
    assert_eq!(
        (s.held_sets, s.records, out.len(), s.sequence_advance),
        (1, 0, 0, Some(1))
    );
    assert_eq!(sorted_pending(&d), vec![(v9_scope(5), 1)]);

    // 30 s later the template arrives alone.
    let later = NOW + 30_000;
    let pkt = v9_packet(
        uptime1 + 30_000,
        secs1 + 30,
        11,
        5,
        &[set(0, &template(256, &V4_FIELDS))],
    );
    let (s, out) = decode_from(&mut d, EXPORTER, later, &pkt);
    assert_eq!((s.held_sets, s.records), (0, 2));
    assert_eq!(out, vec![rec, rec]);
    assert_eq!(pending_total(&d), 0);
    assert_eq!(d.take_expired(later + 1_000_000), vec![]);

    // Data before its template inside one packet: held, then released by the same call.
    let mut d = Decoder::default();
    let data = set(256, &v4_record(&rec, uptime1 - 20_000, uptime1 - 10_000));
    let pkt = v9_packet(
        uptime1,
        secs1,
        12,
        5,
        &[data, set(0, &template(256, &V4_FIELDS))],
    );
    let (s, out) = decode(&mut d, &pkt);
    assert_eq!((s.held_sets, s.records), (1, 1));
    assert_eq!(out, vec![rec]);
    assert_eq!(pending_total(&d), 0);
}

#[test]
fn v9_held_data_expires_after_max_age() {
    let limits = Limits {
        pending_max_age_ms: 5_000,
        ..Limits::default()
    };
    let mut d = Decoder::new(limits);
    let body = Buf::new().ip(v4(10, 0, 0, 1)).u32(7).done();
    let t0 = NOW;
    let pkt1 = v9_packet(
        1_000,
        1_700_000_000,
        0,
        1,
        &[set(300, &body), set(301, &body)],
    );
    let (s, _) = decode_from(&mut d, EXPORTER, t0, &pkt1);
    assert_eq!(s.held_sets, 2);
    let pkt2 = v9_packet(3_000, 1_700_000_002, 0, 9, &[set(300, &body)]);
    let (s, _) = decode_from(&mut d, EXPORTER, t0 + 2_000, &pkt2);
    assert_eq!(s.held_sets, 1);
    assert_eq!(sorted_pending(&d), vec![(v9_scope(1), 2), (v9_scope(9), 1)]);

    // Exactly the maximum age is still kept.
    assert_eq!(d.take_expired(t0 + 5_000), vec![]);
    assert_eq!(pending_total(&d), 3);
    assert_eq!(
        d.take_expired(t0 + 5_001),
        vec![ExpiredPending {
            scope: v9_scope(1),
            sets: 2
        }]
    );
    assert_eq!(sorted_pending(&d), vec![(v9_scope(9), 1)]);
    // Reported once only.
    assert_eq!(d.take_expired(t0 + 5_001), vec![]);
    assert_eq!(
        d.take_expired(t0 + 7_001),
        vec![ExpiredPending {
            scope: v9_scope(9),
            sets: 1
        }]
    );
    assert_eq!(pending_total(&d), 0);

    // The template arriving after expiry finds nothing to release.
    let pkt3 = v9_packet(
        9_000,
        1_700_000_008,
        1,
        1,
        &[set(0, &template(300, &[(8, 4), (1, 4)]))],
    );
    let (s, out) = decode_from(&mut d, EXPORTER, t0 + 8_000, &pkt3);
    assert_eq!((s.records, out.len()), (0, 0));
    assert_eq!(d.take_expired(i64::MAX), vec![]);
}

#[test]
fn v9_bounded_hold_evicts_oldest_and_counts_it_expired() {
    let limits = Limits {
        max_pending_sets: 2,
        ..Limits::default()
    };
    let mut d = Decoder::new(limits);
    let body = Buf::new().ip(v4(10, 0, 0, 1)).u32(7).done();
    for (i, id) in [300u16, 301, 302].into_iter().enumerate() {
        let pkt = v9_packet(1_000, 1_700_000_000, i as u32, 1, &[set(id, &body)]);
        let (s, _) = decode_from(&mut d, EXPORTER, NOW + i as i64, &pkt);
        assert_eq!(s.held_sets, 1);
    }
    assert_eq!(sorted_pending(&d), vec![(v9_scope(1), 2)]);
    assert_eq!(
        d.take_expired(NOW + 2),
        vec![ExpiredPending {
            scope: v9_scope(1),
            sets: 1
        }]
    );
    let fields = [(8u16, 4u16), (2, 4)];
    let tmpl = |id| {
        v9_packet(
            2_000,
            1_700_000_001,
            9,
            1,
            &[set(0, &template(id, &fields))],
        )
    };
    // 300 was the oldest and was evicted; 301 and 302 are still there.
    assert_eq!(decode(&mut d, &tmpl(300)).1.len(), 0);
    assert_eq!(decode(&mut d, &tmpl(301)).1.len(), 1);
    assert_eq!(decode(&mut d, &tmpl(302)).1[0].packets, 7);
    assert_eq!(pending_total(&d), 0);

    // A set larger than the byte budget is not held at all and counts as expired.
    let limits = Limits {
        max_pending_bytes: 16,
        ..Limits::default()
    };
    let mut d = Decoder::new(limits);
    let big = set(300, &[0u8; 40]);
    decode(&mut d, &v9_packet(1_000, 1_700_000_000, 0, 1, &[big]));
    assert_eq!(pending_total(&d), 0);
    assert_eq!(
        d.take_expired(NOW),
        vec![ExpiredPending {
            scope: v9_scope(1),
            sets: 1
        }]
    );
}

#[test]
fn v9_options_sampler_table_sets_per_record_rates() {
    let mut d = Decoder::default();
    // Scope System (1); FLOW_SAMPLER_ID, FLOW_SAMPLER_MODE, FLOW_SAMPLER_RANDOM_INTERVAL.
    let otmpl = v9_options_template(257, &[(1, 4)], &[(48, 1), (49, 1), (50, 4)]);
    assert_eq!(otmpl.len(), 22);
    let odata = Buf::new()
        .u32(0)
        .u8(1)
        .u8(2)
        .u32(100)
        .u32(0)
        .u8(2)
        .u8(2)
        .u32(1000)
        .done();
    let pkt1 = v9_packet(
        1_000,
        1_700_000_000,
        0,
        1,
        &[
            set(1, &Buf::new().raw(&otmpl).zeros(2).done()),
            set(257, &odata),
        ],
    );
    let (s, out) = decode(&mut d, &pkt1);
    assert_eq!((s.records, s.set_errors.clone(), out.len()), (0, vec![], 0));
    assert_eq!(d.template_count(), 1);

    let dtmpl = set(
        0,
        &template(256, &[(8, 4), (12, 4), (1, 4), (2, 4), (48, 1)]),
    );
    let rec = |sampler: u8| {
        Buf::new()
            .ip(v4(10, 0, 0, sampler))
            .ip(v4(10, 1, 0, 1))
            .u32(1000)
            .u32(10)
            .u8(sampler)
            .done()
    };
    let data = set(
        256,
        &Buf::new()
            .raw(&[rec(1), rec(2), rec(3)].concat())
            .zeros(1)
            .done(),
    );
    let (_, out) = decode(
        &mut d,
        &v9_packet(2_000, 1_700_000_001, 1, 1, &[dtmpl.clone(), data.clone()]),
    );
    assert_eq!(rates(&out), vec![100, 1000, 1]);
    assert_eq!(out[0].scaled_bytes(), 100_000);
    assert_eq!(out[1].scaled_packets(), 10_000);

    // Another source id of the same exporter has its own (empty) sampler table.
    let (_, out) = decode(
        &mut d,
        &v9_packet(2_000, 1_700_000_001, 1, 2, &[dtmpl, data]),
    );
    assert_eq!(rates(&out), vec![1, 1, 1]);
}

#[test]
fn v9_options_without_sampler_id_set_exporter_default() {
    let mut d = Decoder::default();
    let pkt = |sets: &[Vec<u8>]| v9_packet(1_000, 1_700_000_000, 0, 3, sets);
    // SAMPLING_INTERVAL (34) and SAMPLING_ALGORITHM (35), no sampler id.
    let otmpl = v9_options_template(258, &[(1, 4)], &[(34, 4), (35, 1)]);
    let odata = Buf::new().u32(0).u32(512).u8(2).zeros(3).done();
    decode(
        &mut d,
        &pkt(&[
            set(1, &Buf::new().raw(&otmpl).zeros(2).done()),
            set(258, &odata),
        ]),
    );
    let t256 = template(256, &[(8, 4), (1, 4)]);
    let t257 = template(257, &[(8, 4), (1, 4), (48, 1)]);
    let d256 = set(256, &Buf::new().ip(v4(1, 1, 1, 1)).u32(10).done());
    let d257 = set(
        257,
        &Buf::new().ip(v4(2, 2, 2, 2)).u32(10).u8(9).zeros(3).done(),
    );
    let (_, out) = decode(
        &mut d,
        &pkt(&[set(0, &[t256, t257].concat()), d256.clone(), d257.clone()]),
    );
    // Unknown sampler 9 falls back to the exporter-wide default.
    assert_eq!(rates(&out), vec![512, 512]);

    // Sampler 9 defined later overrides the default for its records only.
    let otmpl9 = v9_options_template(259, &[(1, 4)], &[(48, 1), (50, 4)]);
    let odata9 = Buf::new().u32(0).u8(9).u32(50).zeros(3).done();
    decode(
        &mut d,
        &pkt(&[
            set(1, &Buf::new().raw(&otmpl9).zeros(2).done()),
            set(259, &odata9),
        ]),
    );
    let (_, out) = decode(&mut d, &pkt(&[d256, d257]));
    assert_eq!(rates(&out), vec![512, 50]);
}

#[test]
fn v9_sampling_interval_in_data_template_applies_per_record() {
    let mut d = Decoder::default();
    let t = set(0, &template(256, &[(8, 4), (1, 4), (34, 4)]));
    let data = set(
        256,
        &Buf::new()
            .ip(v4(1, 0, 0, 1))
            .u32(100)
            .u32(10)
            .ip(v4(1, 0, 0, 2))
            .u32(100)
            .u32(0) // 0: not sampled
            .ip(v4(1, 0, 0, 3))
            .u32(100)
            .u32(2000)
            .done(),
    );
    let (_, out) = decode(&mut d, &v9_packet(1_000, 1_700_000_000, 0, 0, &[t, data]));
    assert_eq!(rates(&out), vec![10, 1, 2000]);
    assert_eq!(
        out.iter().map(|r| r.scaled_bytes()).collect::<Vec<_>>(),
        vec![1_000, 100, 200_000]
    );
}

#[test]
fn v9_template_errors_are_confined_to_their_flowset() {
    let mut d = Decoder::default();
    let sets = [
        set(0, &template(300, &[])),
        set(0, &template(301, &[(8, 0)])),
        set(0, &Buf::new().u16(302).u16(513).done()),
        set(0, &template(5, &[(8, 4)])),
        set(0, &Buf::new().u16(303).u16(3).u16(8).u16(4).done()),
        set(1, &Buf::new().u16(304).u16(3).u16(4).done()),
        set(0, &template(305, &[(1, 40_000), (2, 40_000)])),
        set(0, &template(256, &[(8, 4), (1, 4)])),
        set(256, &Buf::new().ip(v4(9, 9, 9, 9)).u32(99).done()),
        // A good template before a bad one in the same flowset stays installed.
        set(
            0,
            &[template(257, &[(8, 4), (2, 4)]), template(306, &[])].concat(),
        ),
        set(257, &Buf::new().ip(v4(8, 8, 8, 8)).u32(88).done()),
        // An all-zero template header ends the flowset (padding).
        set(
            0,
            &Buf::new().raw(&template(258, &[(8, 4)])).zeros(4).done(),
        ),
    ];
    let (s, out) = decode(&mut d, &v9_packet(1_000, 1_700_000_000, 0, 0, &sets));
    assert_eq!(
        s.set_errors,
        vec![
            DecodeError::EmptyTemplate { template_id: 300 },
            DecodeError::ZeroLengthField {
                template_id: 301,
                field_type: 8
            },
            DecodeError::TooManyFields {
                template_id: 302,
                count: 513,
                max: MAX_TEMPLATE_FIELDS
            },
            DecodeError::ReservedTemplateId { template_id: 5 },
            DecodeError::TemplateOverrun { template_id: 303 },
            DecodeError::BadScope {
                template_id: 304,
                scope_len: 3
            },
            DecodeError::RecordTooLong {
                template_id: 305,
                length: 80_000
            },
            DecodeError::EmptyTemplate { template_id: 306 },
        ]
    );
    assert_eq!(MAX_TEMPLATE_FIELDS, 512);
    assert_eq!(d.template_count(), 3);
    assert_eq!(
        out.iter()
            .map(|r| (r.src_addr, r.bytes, r.packets))
            .collect::<Vec<_>>(),
        vec![(v4(9, 9, 9, 9), 99, 0), (v4(8, 8, 8, 8), 0, 88)]
    );
    let kinds: Vec<_> = s.set_errors.iter().map(DecodeError::kind).collect();
    assert_eq!(
        kinds,
        vec![
            "empty_template",
            "zero_length_field",
            "too_many_fields",
            "reserved_template_id",
            "template_overrun",
            "bad_scope",
            "record_too_long",
            "empty_template"
        ]
    );
}

#[test]
fn v9_template_cache_full_drops_only_the_new_template() {
    let limits = Limits {
        max_templates: 2,
        ..Limits::default()
    };
    let mut d = Decoder::new(limits);
    let tset = set(
        0,
        &[
            template(256, &[(8, 4), (1, 4)]),
            template(257, &[(8, 4)]),
            template(258, &[(8, 4)]),
            // After the failure: a redefinition of 256, which must still be applied.
            template(256, &[(1, 4), (8, 4)]),
        ]
        .concat(),
    );
    let data = set(256, &Buf::new().u32(777).ip(v4(5, 5, 5, 5)).done());
    let (s, out) = decode(
        &mut d,
        &v9_packet(1_000, 1_700_000_000, 0, 0, &[tset, data]),
    );
    assert_eq!(
        s.set_errors,
        vec![DecodeError::TemplateCacheFull {
            template_id: 258,
            max: 2
        }]
    );
    assert_eq!(d.template_count(), 2);
    assert_eq!((out[0].bytes, out[0].src_addr), (777, v4(5, 5, 5, 5)));
}

#[test]
fn v9_malformed_datagram_changes_no_state() {
    let mut d = Decoder::default();
    let fields = [(8u16, 4u16), (1, 4)];
    let held = set(256, &Buf::new().ip(v4(1, 1, 1, 1)).u32(5).done());
    let (s, _) = decode(&mut d, &v9_packet(1_000, 1_700_000_000, 0, 0, &[held]));
    assert_eq!(s.held_sets, 1);

    // A valid template set followed by a set whose length is below 4.
    let tset = set(0, &template(256, &fields));
    assert_eq!(tset.len(), 16);
    let short = Buf::new().u16(256).u16(3).done();
    let err = decode_err(
        &mut d,
        &v9_packet(1_000, 1_700_000_000, 1, 0, &[tset.clone(), short]),
    );
    assert_eq!(
        err,
        DecodeError::SetLength {
            set_id: 256,
            offset: 20 + 16,
            length: 3,
            remaining: 4
        }
    );
    // ... or whose length runs past the end.
    let long = Buf::new().u16(256).u16(100).u32(0).done();
    let err = decode_err(
        &mut d,
        &v9_packet(1_000, 1_700_000_000, 1, 0, &[tset.clone(), long]),
    );
    assert_eq!(
        err,
        DecodeError::SetLength {
            set_id: 256,
            offset: 36,
            length: 100,
            remaining: 8
        }
    );
    assert_eq!(err.kind(), "set_length");
    assert_eq!(d.template_count(), 0);
    assert_eq!(pending_total(&d), 1);

    // Truncated header.
    let pkt = v9_packet(1_000, 1_700_000_000, 1, 0, &[]);
    assert_eq!(
        decode_err(&mut d, &pkt[..19]),
        DecodeError::TruncatedHeader {
            what: "NetFlow v9",
            len: 19,
            need: 20
        }
    );

    // The same template in a good datagram releases the held set.
    let (s, out) = decode(&mut d, &v9_packet(1_000, 1_700_000_000, 1, 0, &[tset]));
    assert_eq!((s.records, out[0].bytes), (1, 5));
    assert_eq!(d.template_count(), 1);
}

// ---------------------------------------------------------------------------------------
// IPFIX
// ---------------------------------------------------------------------------------------

#[test]
fn ipfix_template_and_data_sets() {
    let fields = [
        (8u16, 4u16),
        (12, 4),
        (15, 4),
        (7, 2),
        (11, 2),
        (4, 1),
        (6, 1),
        (5, 1),
        (9, 1),
        (13, 1),
        (10, 4),
        (14, 4),
        (16, 4),
        (17, 4),
        (1, 8),
        (2, 8),
        (3, 8),
        (152, 8),
        (153, 8),
    ];
    let expected = |i: u8| FlowRecord {
        src_addr: v4(10, 0, 0, i),
        dst_addr: v4(10, 0, 1, i),
        next_hop: Some(v4(10, 0, 2, 1)),
        src_port: 1000 + u16::from(i),
        dst_port: 443,
        proto: 6,
        tos: 0x10,
        tcp_flags: 0x18,
        src_mask: 24,
        dst_mask: 25,
        input_if: 100_000 + u32::from(i),
        output_if: 7,
        src_as: 4_200_000_000,
        dst_as: 13335,
        bytes: 10_000_000_000 + u64::from(i),
        packets: 7_000_000 + u64::from(i),
        flows: 2,
        start_ms: 1_700_000_400_123 + i64::from(i),
        end_ms: 1_700_000_450_456,
        ..FlowRecord::default()
    };
    let encode = |r: &FlowRecord| {
        Buf::new()
            .ip(r.src_addr)
            .ip(r.dst_addr)
            .ip(r.next_hop.unwrap())
            .u16(r.src_port)
            .u16(r.dst_port)
            .u8(r.proto)
            .u8(r.tcp_flags)
            .u8(r.tos)
            .u8(r.src_mask)
            .u8(r.dst_mask)
            .u32(r.input_if)
            .u32(r.output_if)
            .u32(r.src_as)
            .u32(r.dst_as)
            .u64(r.bytes)
            .u64(r.packets)
            .u64(r.flows)
            .u64(r.start_ms as u64)
            .u64(r.end_ms as u64)
            .done()
    };
    let recs: Vec<FlowRecord> = (1..=3).map(expected).collect();
    let data: Vec<u8> = recs.iter().flat_map(encode).collect();
    let mut d = Decoder::default();
    let msg = ipfix_msg(
        1_700_000_500,
        1000,
        0xabcd,
        &[set(2, &template(256, &fields)), set(256, &data)],
    );
    let (s, out) = decode(&mut d, &msg);
    assert_eq!(
        s,
        PacketSummary {
            protocol: Protocol::Ipfix,
            source_id: 0xabcd,
            sequence: 1000,
            sequence_advance: Some(3),
            sys_uptime_ms: None,
            records: 3,
            held_sets: 0,
            set_errors: vec![],
        }
    );
    assert_eq!(out, recs);
    // A message with only a template set advances the sequence by nothing.
    let (s, _) = decode(
        &mut d,
        &ipfix_msg(
            1_700_000_501,
            1003,
            0xabcd,
            &[set(2, &template(256, &fields))],
        ),
    );
    assert_eq!(s.sequence_advance, Some(0));
}

#[test]
fn ipfix_alternate_elements_and_fallbacks() {
    let mut d = Decoder::default();
    // icmpTypeIPv4/icmpCodeIPv4, ipDiffServCodePoint, dot1qVlanId, bgpNextHop,
    // octetTotalCount/packetTotalCount in place of the delta counters.
    let t256 = template(
        256,
        &[
            (8, 4),
            (12, 4),
            (4, 1),
            (176, 1),
            (177, 1),
            (195, 1),
            (243, 2),
            (18, 4),
            (85, 8),
            (86, 8),
        ],
    );
    let d256 = Buf::new()
        .ip(v4(10, 0, 0, 1))
        .ip(v4(10, 0, 0, 2))
        .u8(1)
        .u8(3)
        .u8(1)
        .u8(46)
        .u16(300)
        .ip(v4(203, 0, 113, 1))
        .u64(9_000)
        .u64(9)
        .done();
    // Delta counter wins over total, ipNextHop over bgpNextHop, vlanId over dot1qVlanId;
    // icmpTypeCodeIPv6 (139).
    let t257 = template(
        257,
        &[
            (27, 16),
            (1, 4),
            (85, 4),
            (18, 4),
            (15, 4),
            (243, 2),
            (58, 2),
            (139, 2),
            (4, 1),
        ],
    );
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
    let d257 = Buf::new()
        .raw(&v6.octets())
        .u32(100)
        .u32(999_999)
        .ip(v4(203, 0, 113, 1))
        .ip(v4(10, 0, 0, 254))
        .u16(300)
        .u16(301)
        .u16(0x8000)
        .u8(58)
        .done();
    let msg = ipfix_msg(
        1_700_000_000,
        0,
        1,
        &[
            set(2, &[t256, t257].concat()),
            set(256, &d256),
            set(257, &d257),
        ],
    );
    let (s, out) = decode(&mut d, &msg);
    assert_eq!(s.sequence_advance, Some(2));
    assert_eq!(
        out,
        vec![
            FlowRecord {
                src_addr: v4(10, 0, 0, 1),
                dst_addr: v4(10, 0, 0, 2),
                next_hop: Some(v4(203, 0, 113, 1)),
                proto: 1,
                tos: 46 << 2,
                src_vlan: Some(300),
                icmp_type_code: Some(0x0301),
                bytes: 9_000,
                packets: 9,
                start_ms: NOW,
                end_ms: NOW,
                ..FlowRecord::default()
            },
            FlowRecord {
                src_addr: IpAddr::V6(v6),
                next_hop: Some(v4(10, 0, 0, 254)),
                proto: 58,
                src_vlan: Some(301),
                icmp_type_code: Some(0x8000),
                bytes: 100,
                start_ms: NOW,
                end_ms: NOW,
                ..FlowRecord::default()
            },
        ]
    );
    assert_eq!(out[0].dscp(), 46);
}

#[test]
fn ipfix_options_data_sampling() {
    let mut d = Decoder::default();
    let otset = set(
        3,
        &[
            // observationDomainId scope, samplingInterval: exporter-wide default.
            ipfix_options_template(300, 1, &[(149, 4), (34, 4)]),
            // samplerId scope, samplerRandomInterval.
            ipfix_options_template(301, 1, &[(48, 2), (50, 4)]),
            // selectorId scope, samplingPacketInterval and samplingPacketSpace.
            ipfix_options_template(302, 1, &[(302, 4), (305, 4), (306, 4)]),
        ]
        .concat(),
    );
    let msg1 = ipfix_msg(
        1_700_000_000,
        0,
        5,
        &[
            otset,
            set(300, &Buf::new().u32(5).u32(64).done()),
            set(301, &Buf::new().u16(7).u32(250).done()),
            set(
                302,
                &Buf::new()
                    .u32(9)
                    .u32(1)
                    .u32(99) // (1 + 99) / 1 = 100
                    .u32(10)
                    .u32(4)
                    .u32(96) // (4 + 96) / 4 = 25
                    .done(),
            ),
        ],
    );
    let (s, out) = decode(&mut d, &msg1);
    // Options data records count as data records for the sequence number.
    assert_eq!((s.records, s.sequence_advance, out.len()), (0, Some(4), 0));
    assert_eq!(d.template_count(), 3);

    let tset = set(
        2,
        &[
            template(256, &[(8, 4), (1, 4), (48, 2)]),
            template(257, &[(8, 4), (1, 4), (302, 4)]),
            template(258, &[(8, 4), (1, 4), (34, 4)]),
        ]
        .concat(),
    );
    let r = |last: u8| Buf::new().ip(v4(10, 0, 0, last)).u32(1000);
    let msg2 = ipfix_msg(
        1_700_000_001,
        4,
        5,
        &[
            tset.clone(),
            set(256, &[r(1).u16(7).done(), r(2).u16(8).done()].concat()),
            set(
                257,
                &[r(3).u32(9).done(), r(4).u32(10).done(), r(5).u32(7).done()].concat(),
            ),
            set(258, &r(6).u32(3).done()),
        ],
    );
    let (s, out) = decode(&mut d, &msg2);
    assert_eq!(s.sequence_advance, Some(6));
    // samplerId 7 → 250; unknown 8 → default 64; selectorId 9 → 100, 10 → 25; 7 again
    // (one id space) → 250; own samplingInterval 3 → 3.
    assert_eq!(rates(&out), vec![250, 64, 100, 25, 250, 3]);
    assert_eq!(out[2].scaled_bytes(), 100_000);

    // Another observation domain knows none of this.
    let msg3 = ipfix_msg(1_700_000_001, 0, 6, &[tset, set(256, &r(1).u16(7).done())]);
    let (_, out) = decode(&mut d, &msg3);
    assert_eq!(rates(&out), vec![1]);
}

#[test]
fn ipfix_withdrawal_of_one_template() {
    let mut d = Decoder::default();
    let t256 = template(256, &[(8, 4), (1, 4)]);
    let t257 = template(257, &[(8, 4), (2, 4)]);
    let msg = |seq, sets: &[Vec<u8>]| ipfix_msg(1_700_000_000, seq, 1, sets);
    decode(&mut d, &msg(0, &[set(2, &[t256.clone(), t257].concat())]));
    assert_eq!(d.template_count(), 2);

    let (s, _) = decode(
        &mut d,
        &msg(0, &[set(2, &Buf::new().u16(256).u16(0).done())]),
    );
    assert_eq!(s.set_errors, vec![]);
    assert_eq!(d.template_count(), 1);

    let d256 = set(256, &Buf::new().ip(v4(1, 1, 1, 1)).u32(10).done());
    let d257 = set(257, &Buf::new().ip(v4(2, 2, 2, 2)).u32(20).done());
    let (s, out) = decode(&mut d, &msg(0, &[d256.clone(), d257]));
    assert_eq!(
        s.set_errors,
        vec![DecodeError::WithdrawnTemplate { template_id: 256 }]
    );
    assert_eq!(s.set_errors[0].kind(), "withdrawn_template");
    assert_eq!(s.held_sets, 0);
    assert_eq!(pending_total(&d), 0);
    // Only the other template's record; the advance is unknown because a data set
    // could not be counted.
    assert_eq!(
        out.iter()
            .map(|r| (r.src_addr, r.packets))
            .collect::<Vec<_>>(),
        vec![(v4(2, 2, 2, 2), 20)]
    );
    assert_eq!(s.sequence_advance, None);

    // Re-announcing the template makes it usable again.
    let (s, out) = decode(&mut d, &msg(2, &[set(2, &t256), d256]));
    assert_eq!((s.set_errors.len(), out[0].bytes), (0, 10));
    assert_eq!(d.template_count(), 2);
}

#[test]
fn ipfix_withdraw_all_templates_by_kind() {
    let mut d = Decoder::default();
    let msg = |sets: &[Vec<u8>]| ipfix_msg(1_700_000_000, 0, 1, sets);
    let t256 = template(256, &[(8, 4), (1, 4)]);
    let t257 = template(257, &[(8, 4), (2, 4)]);
    let ot300 = ipfix_options_template(300, 1, &[(149, 4), (34, 4)]);
    decode(
        &mut d,
        &msg(&[set(2, &[t256.clone(), t257].concat()), set(3, &ot300)]),
    );
    assert_eq!(d.template_count(), 3);

    // Template id 2 in a template set withdraws every (data) template.
    decode(&mut d, &msg(&[set(2, &Buf::new().u16(2).u16(0).done())]));
    assert_eq!(d.template_count(), 1);
    let d256 = set(256, &Buf::new().ip(v4(1, 1, 1, 1)).u32(10).done());
    let d257 = set(257, &Buf::new().ip(v4(2, 2, 2, 2)).u32(20).done());
    let o300 = set(300, &Buf::new().u32(1).u32(10).done());
    let (s, out) = decode(&mut d, &msg(&[d256.clone(), d257, o300.clone()]));
    assert_eq!(
        s.set_errors,
        vec![
            DecodeError::WithdrawnTemplate { template_id: 256 },
            DecodeError::WithdrawnTemplate { template_id: 257 },
        ]
    );
    assert_eq!(out.len(), 0);

    // Template id 3 in an options template set withdraws every options template.
    decode(&mut d, &msg(&[set(3, &Buf::new().u16(3).u16(0).done())]));
    assert_eq!(d.template_count(), 0);
    let (s, _) = decode(&mut d, &msg(&[o300]));
    assert_eq!(
        s.set_errors,
        vec![DecodeError::WithdrawnTemplate { template_id: 300 }]
    );

    // Sampling state learned before the withdrawal survives it.
    let (s, out) = decode(&mut d, &msg(&[set(2, &t256), d256]));
    assert_eq!(s.set_errors, vec![]);
    assert_eq!(rates(&out), vec![10]);
}

#[test]
fn ipfix_variable_length_fields_in_both_encodings() {
    let mut d = Decoder::default();
    // interfaceName (82) and applicationName (96) are variable-length strings.
    let t = template(256, &[(8, 4), (82, 0xffff), (1, 4), (96, 0xffff), (2, 4)]);
    let data = Buf::new()
        // 1-byte lengths, one of them zero.
        .ip(v4(10, 0, 0, 1))
        .u8(3)
        .raw(b"eth")
        .u32(1000)
        .u8(0)
        .u32(10)
        // 3-byte length encoding (255, u16) and the longest 1-byte length.
        .ip(v4(10, 0, 0, 2))
        .u8(255)
        .u16(300)
        .raw(&[b'x'; 300])
        .u32(2000)
        .u8(254)
        .raw(&[b'y'; 254])
        .u32(20)
        // 3-byte encoding of a short value.
        .ip(v4(10, 0, 0, 3))
        .u8(255)
        .u16(2)
        .raw(b"ab")
        .u32(3000)
        .u8(1)
        .raw(b"z")
        .u32(30)
        // Padding shorter than the smallest record.
        .zeros(3)
        .done();
    let (s, out) = decode(
        &mut d,
        &ipfix_msg(1_700_000_000, 0, 1, &[set(2, &t), set(256, &data)]),
    );
    assert_eq!(
        (s.set_errors.clone(), s.sequence_advance),
        (vec![], Some(3))
    );
    assert_eq!(
        out,
        (1..=3u8)
            .map(|i| FlowRecord {
                src_addr: v4(10, 0, 0, i),
                bytes: 1000 * u64::from(i),
                packets: 10 * u64::from(i),
                start_ms: NOW,
                end_ms: NOW,
                ..FlowRecord::default()
            })
            .collect::<Vec<_>>()
    );
}

#[test]
fn ipfix_enterprise_fields_are_skipped_by_length() {
    let mut d = Decoder::default();
    let t = Buf::new()
        .u16(256)
        .u16(6)
        .u16(8)
        .u16(4)
        // Enterprise element 1 of PEN 29305: not octetDeltaCount.
        .u16(0x8000 | 1)
        .u16(4)
        .u32(29305)
        .u16(1)
        .u16(4)
        // Variable-length enterprise element.
        .u16(0x8000 | 2)
        .u16(0xffff)
        .u32(9)
        .u16(2)
        .u16(4)
        // Enterprise element 8: not sourceIPv4Address.
        .u16(0x8000 | 8)
        .u16(4)
        .u32(1)
        .done();
    let data = Buf::new()
        .ip(v4(10, 9, 9, 9))
        .u32(0xdead_beef)
        .u32(4242)
        .u8(4)
        .raw(b"blob")
        .u32(42)
        .ip(v4(1, 2, 3, 4))
        .done();
    let (s, out) = decode(
        &mut d,
        &ipfix_msg(1_700_000_000, 0, 1, &[set(2, &t), set(256, &data)]),
    );
    assert_eq!(s.set_errors, vec![]);
    assert_eq!(
        out,
        vec![FlowRecord {
            src_addr: v4(10, 9, 9, 9),
            bytes: 4242,
            packets: 42,
            start_ms: NOW,
            end_ms: NOW,
            ..FlowRecord::default()
        }]
    );
    // An enterprise field whose PEN is cut off by the end of the set.
    let cut = Buf::new().u16(257).u16(1).u16(0x8001).u16(4).u16(0).done();
    let (s, _) = decode(&mut d, &ipfix_msg(1_700_000_000, 0, 1, &[set(2, &cut)]));
    assert_eq!(
        s.set_errors,
        vec![DecodeError::TemplateOverrun { template_id: 257 }]
    );
    assert_eq!(d.template_count(), 1);
}

/// Template id, fields after sourceIPv4Address, their values, expected start and end.
type TimeCase = (u16, Vec<(u16, u16)>, Vec<u8>, i64, i64);

#[test]
fn ipfix_time_fields() {
    let export_secs = 1_700_000_500u32;
    let export_ms = i64::from(export_secs) * 1000;
    let init_ms = 1_699_990_000_000i64;
    let ntp = |unix_secs: u64, frac: u32| ((unix_secs + 2_208_988_800) << 32) | u64::from(frac);
    let cases: Vec<TimeCase> = vec![
        (
            257,
            vec![(150, 4), (151, 4)],
            Buf::new().u32(1_700_000_400).u32(1_700_000_450).done(),
            1_700_000_400_000,
            1_700_000_450_000,
        ),
        (
            258,
            vec![(152, 8), (153, 8)],
            Buf::new()
                .u64(1_700_000_400_123)
                .u64(1_700_000_450_456)
                .done(),
            1_700_000_400_123,
            1_700_000_450_456,
        ),
        (
            259,
            vec![(154, 8), (155, 8)],
            Buf::new()
                .u64(ntp(1_700_000_400, 0x4000_0000))
                .u64(ntp(1_700_000_450, 0x8000_0000))
                .done(),
            1_700_000_400_250,
            1_700_000_450_500,
        ),
        (
            260,
            vec![(156, 8), (157, 8)],
            Buf::new()
                .u64(ntp(1_700_000_401, 0xc000_0000))
                .u64(ntp(1_700_000_402, 0))
                .done(),
            1_700_000_401_750,
            1_700_000_402_000,
        ),
        (
            261,
            vec![(22, 4), (21, 4)],
            Buf::new().u32(5_000).u32(9_000).done(),
            init_ms + 5_000,
            init_ms + 9_000,
        ),
        (
            262,
            vec![(158, 4), (159, 4)],
            Buf::new().u32(60_000_000).u32(1_500).done(),
            export_ms - 60_000,
            export_ms - 1, // whole milliseconds of the delta
        ),
        (
            263,
            vec![(152, 8), (161, 4)],
            Buf::new().u64(1_700_000_400_000).u32(2_500).done(),
            1_700_000_400_000,
            1_700_000_402_500,
        ),
        (
            264,
            vec![(153, 8), (162, 4)],
            Buf::new().u64(1_700_000_450_000).u32(1_500_000).done(),
            1_700_000_448_500,
            1_700_000_450_000,
        ),
        (
            265,
            vec![(1, 4)],
            Buf::new().u32(1).done(),
            export_ms,
            export_ms,
        ),
        (
            266,
            vec![(151, 4)],
            Buf::new().u32(1_700_000_450).done(),
            1_700_000_450_000,
            1_700_000_450_000,
        ),
    ];
    let mut templates = Vec::new();
    let mut data_sets = Vec::new();
    for (i, (id, fields, values, _, _)) in cases.iter().enumerate() {
        let mut all = vec![(8u16, 4u16)];
        all.extend(fields);
        templates.extend(template(*id, &all));
        data_sets.push(set(
            *id,
            &Buf::new().ip(v4(10, 0, 0, i as u8)).raw(values).done(),
        ));
    }
    let mut sets = vec![
        set(3, &ipfix_options_template(300, 1, &[(149, 4), (160, 8)])),
        set(300, &Buf::new().u32(1).u64(init_ms as u64).done()),
        set(2, &templates),
    ];
    sets.extend(data_sets);
    let mut d = Decoder::default();
    let (s, out) = decode(&mut d, &ipfix_msg(export_secs, 0, 1, &sets));
    assert_eq!(s.set_errors, vec![]);
    assert_eq!(s.sequence_advance, Some(1 + cases.len() as u32));
    let got: Vec<_> = out.iter().map(|r| (r.start_ms, r.end_ms)).collect();
    let want: Vec<_> = cases.iter().map(|c| (c.3, c.4)).collect();
    assert_eq!(got, want);

    // Without systemInitTimeMilliseconds, sysUpTime stamps cannot be placed: the
    // record falls back to the export time.
    let mut d = Decoder::default();
    let msg = ipfix_msg(
        export_secs,
        0,
        1,
        &[
            set(2, &template(261, &[(8, 4), (22, 4), (21, 4)])),
            set(261, &Buf::new().u32(1).u32(5_000).u32(9_000).done()),
        ],
    );
    let (_, out) = decode(&mut d, &msg);
    assert_eq!((out[0].start_ms, out[0].end_ms), (export_ms, export_ms));
}

#[test]
fn ipfix_held_data_uses_its_own_export_time() {
    let mut d = Decoder::default();
    let t = template(256, &[(8, 4), (158, 4), (159, 4)]);
    let data = set(
        256,
        &Buf::new().ip(v4(10, 0, 0, 1)).u32(10_000_000).u32(0).done(),
    );
    let (s, out) = decode(&mut d, &ipfix_msg(1_700_000_000, 50, 7, &[data]));
    assert_eq!((s.held_sets, s.sequence_advance, out.len()), (1, None, 0));
    assert_eq!(sorted_pending(&d), vec![(ipfix_scope(7), 1)]);
    let (s, out) = decode_from(
        &mut d,
        EXPORTER,
        NOW + 60_000,
        &ipfix_msg(1_700_000_060, 51, 7, &[set(2, &t)]),
    );
    // Released records are output but do not advance this message's sequence.
    assert_eq!((s.records, s.sequence_advance), (1, Some(0)));
    assert_eq!((out[0].start_ms, out[0].end_ms), (NOW - 10_000, NOW));
}

#[test]
fn ipfix_malformed_templates_are_set_errors() {
    let mut d = Decoder::default();
    let mut wide: Vec<(u16, u16)> = vec![(400, 1); MAX_TEMPLATE_FIELDS - 1];
    wide.push((1, 4));
    let sets = [
        set(2, &template(256, &[(8, 4), (1, 0)])),
        set(2, &Buf::new().u16(257).u16(513).done()),
        set(2, &template(255, &[(8, 4)])),
        set(3, &ipfix_options_template(258, 0, &[(149, 4), (34, 4)])),
        set(3, &ipfix_options_template(259, 3, &[(149, 4), (34, 4)])),
        // Exactly the limit is accepted.
        set(2, &template(260, &wide)),
        set(
            260,
            &Buf::new().zeros(MAX_TEMPLATE_FIELDS - 1).u32(77).done(),
        ),
        // Reserved set ids are skipped silently.
        set(4, &[0; 8]),
        set(255, &[]),
        set(0, &[1, 2, 3, 4]),
        set(1, &[]),
    ];
    let (s, out) = decode(&mut d, &ipfix_msg(1_700_000_000, 0, 1, &sets));
    assert_eq!(
        s.set_errors,
        vec![
            DecodeError::ZeroLengthField {
                template_id: 256,
                field_type: 1
            },
            DecodeError::TooManyFields {
                template_id: 257,
                count: 513,
                max: MAX_TEMPLATE_FIELDS
            },
            DecodeError::ReservedTemplateId { template_id: 255 },
            DecodeError::BadScope {
                template_id: 258,
                scope_len: 0
            },
            DecodeError::BadScope {
                template_id: 259,
                scope_len: 3
            },
        ]
    );
    assert_eq!(d.template_count(), 1);
    assert_eq!(out.iter().map(|r| r.bytes).collect::<Vec<_>>(), vec![77]);
}

#[test]
fn ipfix_variable_length_overrun_is_a_set_error() {
    let mut d = Decoder::default();
    let tset = set(
        2,
        &[
            template(256, &[(8, 4), (82, 0xffff)]),
            template(257, &[(8, 4), (1, 4)]),
        ]
        .concat(),
    );
    // First record fine, second announces 10 bytes but has 3.
    let bad1 = set(
        256,
        &Buf::new()
            .ip(v4(1, 1, 1, 1))
            .u8(2)
            .raw(b"ab")
            .ip(v4(2, 2, 2, 2))
            .u8(10)
            .raw(b"abc")
            .done(),
    );
    // A 255 marker with its 2-byte length cut off.
    let bad2 = set(256, &Buf::new().ip(v4(4, 4, 4, 4)).u8(255).u8(1).done());
    let good = set(257, &Buf::new().ip(v4(3, 3, 3, 3)).u32(77).done());
    let (s, out) = decode(
        &mut d,
        &ipfix_msg(1_700_000_000, 0, 1, &[tset, bad1, good, bad2]),
    );
    assert_eq!(
        s.set_errors,
        vec![
            DecodeError::VariableLengthOverrun {
                template_id: 256,
                offset: 12
            },
            DecodeError::VariableLengthOverrun {
                template_id: 256,
                offset: 5
            },
        ]
    );
    assert_eq!(s.set_errors[0].kind(), "varlen_overrun");
    // No partial records from the bad sets.
    assert_eq!(
        out.iter()
            .map(|r| (r.src_addr, r.bytes))
            .collect::<Vec<_>>(),
        vec![(v4(3, 3, 3, 3), 77)]
    );
    assert_eq!(s.sequence_advance, None);
}

#[test]
fn ipfix_options_overrun_changes_no_sampling_state() {
    let mut d = Decoder::default();
    let ot = ipfix_options_template(300, 1, &[(48, 1), (34, 4), (82, 0xffff)]);
    let good_rec = Buf::new().u8(1).u32(100).u8(0).done();
    let bad_rec = Buf::new().u8(2).u32(200).u8(50).raw(b"ab").done();
    let odata = set(300, &[good_rec.clone(), bad_rec].concat());
    let t = set(2, &template(256, &[(8, 4), (1, 4), (48, 1)]));
    let data = set(
        256,
        &Buf::new()
            .ip(v4(1, 1, 1, 1))
            .u32(10)
            .u8(1)
            .ip(v4(2, 2, 2, 2))
            .u32(10)
            .u8(2)
            .done(),
    );
    let msg = |sets: &[Vec<u8>]| ipfix_msg(1_700_000_000, 0, 1, sets);
    let (s, out) = decode(&mut d, &msg(&[set(3, &ot), odata, t, data.clone()]));
    assert_eq!(
        s.set_errors,
        vec![DecodeError::VariableLengthOverrun {
            template_id: 300,
            offset: 12
        }]
    );
    assert_eq!(rates(&out), vec![1, 1]);
    // The good record alone is applied.
    let (_, out) = decode(&mut d, &msg(&[set(300, &good_rec), data]));
    assert_eq!(rates(&out), vec![100, 1]);
}

#[test]
fn ipfix_bad_held_data_does_not_stop_the_template_set() {
    let mut d = Decoder::default();
    let msg = |sets: &[Vec<u8>]| ipfix_msg(1_700_000_000, 0, 1, sets);
    // Held for template 256; its variable-length field overruns the set.
    let held = set(
        256,
        &Buf::new().ip(v4(1, 1, 1, 1)).u8(10).raw(b"abc").done(),
    );
    let (s, _) = decode(&mut d, &msg(&[held]));
    assert_eq!(s.held_sets, 1);
    let tset = set(
        2,
        &[
            template(256, &[(8, 4), (82, 0xffff)]),
            template(257, &[(8, 4), (1, 4)]),
        ]
        .concat(),
    );
    let good = set(257, &Buf::new().ip(v4(2, 2, 2, 2)).u32(9).done());
    let (s, out) = decode(&mut d, &msg(&[tset, good]));
    assert_eq!(
        s.set_errors,
        vec![DecodeError::VariableLengthOverrun {
            template_id: 256,
            offset: 5
        }]
    );
    assert_eq!(d.template_count(), 2);
    assert_eq!((s.held_sets, out.len(), out[0].bytes), (0, 1, 9));
    assert_eq!(pending_total(&d), 0);
}

#[test]
fn ipfix_malformed_messages_change_no_state() {
    let mut d = Decoder::default();
    let tset = set(2, &template(256, &[(8, 4), (1, 4)]));
    assert_eq!(tset.len(), 16);
    // Set length below 4 after a valid template set.
    let msg = ipfix_msg(
        1_700_000_000,
        0,
        1,
        &[tset.clone(), Buf::new().u16(256).u16(2).done()],
    );
    assert_eq!(
        decode_err(&mut d, &msg),
        DecodeError::SetLength {
            set_id: 256,
            offset: 32,
            length: 2,
            remaining: 4
        }
    );
    // Set length past the end of the message.
    let msg = ipfix_msg(
        1_700_000_000,
        0,
        1,
        &[tset.clone(), Buf::new().u16(256).u16(64).u32(0).done()],
    );
    assert_eq!(
        decode_err(&mut d, &msg),
        DecodeError::SetLength {
            set_id: 256,
            offset: 32,
            length: 64,
            remaining: 8
        }
    );
    assert_eq!(d.template_count(), 0);

    // Message length longer than the datagram, or shorter than the header.
    let good = ipfix_msg(1_700_000_000, 0, 1, std::slice::from_ref(&tset));
    let mut long = good.clone();
    long[2..4].copy_from_slice(&(good.len() as u16 + 4).to_be_bytes());
    assert_eq!(
        decode_err(&mut d, &long),
        DecodeError::MessageLength {
            length: good.len() as u16 + 4,
            len: good.len()
        }
    );
    let mut short = good.clone();
    short[2..4].copy_from_slice(&15u16.to_be_bytes());
    assert_eq!(
        decode_err(&mut d, &short),
        DecodeError::MessageLength {
            length: 15,
            len: good.len()
        }
    );
    assert_eq!(
        decode_err(&mut d, &good[..15]),
        DecodeError::TruncatedHeader {
            what: "IPFIX",
            len: 15,
            need: 16
        }
    );
    assert_eq!(d.template_count(), 0);

    // Bytes after the message length are ignored.
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0xff; 7]);
    let (s, _) = decode(&mut d, &trailing);
    assert_eq!(s.set_errors, vec![]);
    assert_eq!(d.template_count(), 1);
}

#[test]
fn unknown_versions_are_rejected() {
    let mut d = Decoder::default();
    for version in [0u16, 1, 6, 7, 8, 11, 0xffff] {
        let mut pkt = Buf::new().u16(version).zeros(40).done();
        assert_eq!(
            decode_err(&mut d, &pkt),
            DecodeError::UnknownVersion(version)
        );
        pkt.truncate(2);
        assert_eq!(
            decode_err(&mut d, &pkt),
            DecodeError::UnknownVersion(version)
        );
    }
    assert_eq!(DecodeError::UnknownVersion(7).kind(), "unknown_version");
}

// ---------------------------------------------------------------------------------------
// Encoder round trip and seeded mutation loop
// ---------------------------------------------------------------------------------------

fn model(ipv6: bool, wide_as: bool) -> TrafficModel {
    TrafficModel {
        ipv6,
        wide_as,
        interfaces: 8,
        as_count: 16,
    }
}

/// Valid datagrams from the encoders, with the records they carry.
fn encoded_corpus(rng: &mut SplitMix64) -> Vec<(Vec<u8>, Vec<FlowRecord>)> {
    let now = NOW + 5_000; // whole seconds: v9 headers carry seconds only
    let mut corpus = Vec::new();
    for n in [1usize, 7, 30] {
        let recs: Vec<FlowRecord> = (0..n)
            .map(|_| model(false, false).flow(rng, now - 1_000))
            .collect();
        let h = V5Header {
            sys_uptime_ms: 3_600_000,
            unix_ms: now + 123,
            flow_sequence: 1,
            engine_type: 1,
            engine_id: 2,
            sampling_interval: 0,
        };
        corpus.push((encode_v5(&h, &recs), recs));
    }
    for protocol in [EncodeProtocol::V9, EncodeProtocol::Ipfix] {
        for ipv6 in [false, true] {
            let mut exp = TemplateExporter::new(protocol, ipv6, 3, now - 3_600_000);
            for (n, with_template) in [(3usize, true), (14, false), (0, true)] {
                let recs: Vec<FlowRecord> = (0..n)
                    .map(|_| model(ipv6, true).flow(rng, now - 500))
                    .collect();
                corpus.push((exp.datagram(now, &recs, with_template), recs));
            }
        }
    }
    corpus
}

#[test]
fn encoder_datagrams_round_trip() {
    let mut rng = SplitMix64::new(7);
    let mut d = Decoder::default();
    for (datagram, sent) in encoded_corpus(&mut rng) {
        let (s, got) = decode_from(&mut d, EXPORTER, NOW, &datagram);
        assert_eq!(s.set_errors, vec![]);
        let want: Vec<FlowRecord> = sent
            .iter()
            .map(|r| FlowRecord {
                // v5 carries ICMP type/code in the destination port.
                icmp_type_code: (s.protocol == Protocol::NetflowV5 && r.proto == 1)
                    .then_some(r.dst_port),
                ..*r
            })
            .collect();
        assert_eq!(got, want, "{:?}", s.protocol);
    }
}

/// Hand-built datagrams reaching options, variable-length and enterprise paths.
fn handmade_corpus() -> Vec<Vec<u8>> {
    let v9_opts = v9_packet(
        1_000,
        1_700_000_000,
        0,
        1,
        &[
            set(
                1,
                &Buf::new()
                    .raw(&v9_options_template(
                        257,
                        &[(1, 4)],
                        &[(48, 1), (49, 1), (50, 4)],
                    ))
                    .zeros(2)
                    .done(),
            ),
            set(257, &Buf::new().u32(0).u8(1).u8(2).u32(100).done()),
            set(
                0,
                &template(256, &[(8, 4), (1, 4), (48, 1), (22, 4), (21, 4)]),
            ),
            set(
                256,
                &Buf::new()
                    .ip(v4(1, 1, 1, 1))
                    .u32(5)
                    .u8(1)
                    .u32(500)
                    .u32(900)
                    .zeros(3)
                    .done(),
            ),
        ],
    );
    let ipfix_var = ipfix_msg(
        1_700_000_000,
        0,
        1,
        &[
            set(
                3,
                &ipfix_options_template(300, 1, &[(302, 4), (305, 4), (306, 4), (160, 8)]),
            ),
            set(
                300,
                &Buf::new()
                    .u32(9)
                    .u32(1)
                    .u32(99)
                    .u64(1_699_999_000_000)
                    .done(),
            ),
            set(
                2,
                &template(256, &[(8, 4), (82, 0xffff), (302, 4), (22, 4), (161, 4)]),
            ),
            set(
                256,
                &Buf::new()
                    .ip(v4(1, 1, 1, 1))
                    .u8(3)
                    .raw(b"eth")
                    .u32(9)
                    .u32(100)
                    .u32(50)
                    .ip(v4(2, 2, 2, 2))
                    .u8(255)
                    .u16(4)
                    .raw(b"eth0")
                    .u32(9)
                    .u32(200)
                    .u32(50)
                    .done(),
            ),
        ],
    );
    let ipfix_ent = ipfix_msg(
        1_700_000_000,
        0,
        2,
        &[
            set(
                2,
                &Buf::new()
                    .u16(256)
                    .u16(3)
                    .u16(8)
                    .u16(4)
                    .u16(0x8001)
                    .u16(0xffff)
                    .u32(9)
                    .u16(154)
                    .u16(8)
                    .done(),
            ),
            set(
                256,
                &Buf::new()
                    .ip(v4(3, 3, 3, 3))
                    .u8(2)
                    .raw(b"hi")
                    .u64(1 << 63)
                    .done(),
            ),
            set(2, &Buf::new().u16(256).u16(0).u16(2).u16(0).done()),
        ],
    );
    vec![v9_opts, ipfix_var, ipfix_ent]
}

const INTERESTING_U16: [u16; 14] = [
    0, 1, 2, 3, 4, 5, 9, 10, 255, 256, 0x7fff, 0x8000, 0xfffe, 0xffff,
];

fn mutate(rng: &mut SplitMix64, src: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len() as u64;
        match rng.below(12) {
            0..=2 if len > 0 => {
                let at = rng.below(len) as usize;
                v[at] ^= 1 << rng.below(8);
            }
            3 | 4 if len > 0 => {
                let at = rng.below(len) as usize;
                v[at] = rng.next_u64() as u8;
            }
            8 => v.truncate(rng.below(len + 1) as usize),
            5..=7 if len >= 2 => {
                let at = rng.below(len - 1) as usize;
                let value = if rng.below(4) == 0 {
                    (len as u16)
                        .wrapping_add(rng.below(9) as u16)
                        .wrapping_sub(4)
                } else {
                    INTERESTING_U16[rng.below(INTERESTING_U16.len() as u64) as usize]
                };
                v[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
            9 => {
                let at = rng.below(len + 1) as usize;
                let extra: Vec<u8> = (0..1 + rng.below(8))
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                v.splice(at..at, extra);
            }
            10 if len > 0 => {
                let a = rng.below(len) as usize;
                let b = (a + 1 + rng.below(16) as usize).min(v.len());
                v.drain(a..b);
            }
            11 => {
                // Splice in a piece of another datagram.
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                if !other.is_empty() {
                    let a = rng.below(other.len() as u64) as usize;
                    let b = (a + 1 + rng.below(64) as usize).min(other.len());
                    let at = rng.below(len + 1) as usize;
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            _ => {}
        }
    }
    // Usually keep the IPFIX message length consistent so the sets get parsed.
    if v.len() >= 4 && v[..2] == [0, 10] && rng.below(4) != 0 {
        let l = v.len() as u16;
        v[2..4].copy_from_slice(&l.to_be_bytes());
    }
    v
}

/// What the mutation loop reached, so it cannot silently stop exercising the decoder.
#[derive(Debug, Default)]
struct Reach {
    rejected: usize,
    accepted: usize,
    with_records: usize,
    with_set_errors: usize,
    with_held: usize,
}

/// Decode one (possibly hostile) datagram and check the invariants.
fn fuzz_one(d: &mut Decoder, exporter: IpAddr, now_ms: i64, datagram: &[u8], reach: &mut Reach) {
    let limits = d.limits();
    let sentinel = FlowRecord {
        packets: 4242,
        ..FlowRecord::default()
    };
    let mut out = vec![sentinel];
    let templates = d.template_count();
    let pending = sorted_pending(d);
    match decode_datagram(d, exporter, now_ms, datagram, &mut out) {
        Ok(s) => {
            reach.accepted += 1;
            reach.with_records += usize::from(s.records > 0);
            reach.with_set_errors += usize::from(!s.set_errors.is_empty());
            reach.with_held += usize::from(s.held_sets > 0);
            assert_eq!(s.records, out.len() - 1);
            assert!(s.held_sets <= datagram.len() / 4);
            assert!(out[1..].iter().all(|r| r.sampling_rate >= 1));
        }
        Err(_) => {
            reach.rejected += 1;
            assert_eq!(out.len(), 1);
            assert_eq!(d.template_count(), templates);
            assert_eq!(sorted_pending(d), pending);
        }
    }
    assert_eq!(out[0], sentinel);
    assert!(d.template_count() <= limits.max_templates);
    assert!(pending_total(d) <= limits.max_pending_sets);
}

#[test]
fn random_and_mutated_datagrams_never_panic_and_state_stays_bounded() {
    let limits = Limits {
        max_templates: 24,
        max_scopes: 6,
        max_samplers_per_scope: 8,
        max_pending_sets: 12,
        max_pending_bytes: 16 << 10,
        pending_max_age_ms: 3_000,
    };
    let mut d = Decoder::new(limits);
    // FUZZ_SEED / FUZZ_ITERATIONS run a longer or different campaign locally.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let iterations = env("FUZZ_ITERATIONS", 12_000);
    let mut rng = SplitMix64::new(env("FUZZ_SEED", 0x5eed_f10e));
    let mut corpus: Vec<Vec<u8>> = encoded_corpus(&mut rng)
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    corpus.extend(handmade_corpus());
    let exporters = [
        EXPORTER,
        OTHER_EXPORTER,
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
    ];
    let mut now = NOW;
    let mut reach = Reach::default();
    for datagram in &corpus {
        fuzz_one(&mut d, EXPORTER, now, datagram, &mut reach);
    }
    for i in 0..iterations {
        now += rng.below(500) as i64;
        let exporter = exporters[rng.below(exporters.len() as u64) as usize];
        let datagram = if i % 3 == 0 {
            // Random bytes, usually behind a plausible version number.
            let len = rng.below(320) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if v.len() >= 4 && rng.below(4) != 0 {
                let version = [5u16, 9, 10][rng.below(3) as usize];
                v[..2].copy_from_slice(&version.to_be_bytes());
                if version == 10 {
                    let l = v.len() as u16;
                    v[2..4].copy_from_slice(&l.to_be_bytes());
                }
            }
            v
        } else {
            let src = &corpus[rng.below(corpus.len() as u64) as usize];
            mutate(&mut rng, src, &corpus)
        };
        fuzz_one(&mut d, exporter, now, &datagram, &mut reach);
        if i % 97 == 0 {
            for e in d.take_expired(now) {
                assert!(e.sets > 0);
            }
        }
        if i % 500 == 0 {
            // Keep some valid templates around so mutated data meets known layouts.
            for datagram in &corpus {
                fuzz_one(&mut d, EXPORTER, now, datagram, &mut reach);
            }
        }
    }
    d.take_expired(i64::MAX);
    assert_eq!(pending_total(&d), 0);
    assert!(d.template_count() <= limits.max_templates);
    eprintln!("{reach:?}");
    if iterations < 12_000 {
        return;
    }
    assert!(reach.rejected > 2_000, "{reach:?}");
    assert!(reach.accepted > 2_000, "{reach:?}");
    assert!(reach.with_records > 1_000, "{reach:?}");
    assert!(reach.with_set_errors > 150, "{reach:?}");
    assert!(reach.with_held > 150, "{reach:?}");
}

#[test]
fn extreme_values_do_not_overflow() {
    let mut d = Decoder::default();
    let msg = ipfix_msg(
        1_700_000_000,
        0,
        1,
        &[
            // systemInitTimeMilliseconds at the top of the range, plus an uptime.
            set(3, &ipfix_options_template(300, 1, &[(149, 4), (160, 8)])),
            set(300, &Buf::new().u32(1).u64(u64::MAX).done()),
            set(
                2,
                &[
                    template(256, &[(22, 4), (21, 4)]),
                    template(257, &[(152, 8), (161, 4)]),
                    template(258, &[(153, 8), (162, 4)]),
                    template(259, &[(154, 8), (159, 8)]),
                ]
                .concat(),
            ),
            set(256, &Buf::new().u32(u32::MAX).u32(u32::MAX).done()),
            set(257, &Buf::new().u64(u64::MAX).u32(u32::MAX).done()),
            set(258, &Buf::new().u64(0).u32(u32::MAX).done()),
            set(259, &Buf::new().u64(u64::MAX).u64(u64::MAX).done()),
        ],
    );
    let (s, out) = decode(&mut d, &msg);
    assert_eq!(s.set_errors, Vec::<DecodeError>::new());
    let times: Vec<_> = out.iter().map(|r| (r.start_ms, r.end_ms)).collect();
    assert_eq!(
        times,
        vec![
            (i64::MAX, i64::MAX),
            (i64::MAX, i64::MAX),
            (-4_294_967, 0),
            // NTP start at its maximum; the end is the export time minus the delta.
            (
                (i64::from(u32::MAX) - 2_208_988_800) * 1000 + 999,
                1_700_000_000_000 - (u64::MAX / 1_000) as i64
            ),
        ]
    );

    // Held data received at a negative time, aged against the final flush's i64::MAX.
    let held = v9_packet(0, 0, 0, 1, &[set(300, &[0; 8])]);
    let (s, _) = decode_from(&mut d, EXPORTER, -5, &held);
    assert_eq!(s.held_sets, 1);
    assert_eq!(
        d.take_expired(i64::MAX),
        vec![ExpiredPending {
            scope: v9_scope(1),
            sets: 1
        }]
    );
}
