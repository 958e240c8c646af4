//! Shared driver of the decoder fuzz targets. Each target forces the export version of
//! its input, then feeds it to the decoders; nothing is asserted about the outcome
//! except that decoding returns (no panic, no hang, no unbounded allocation) and that
//! the template cache stays within its limit.

use std::net::{IpAddr, Ipv4Addr};

use flowstage::decode::{decode_datagram, Decoder, FlowRecord, Limits};

/// Where an input is cut into the successive datagrams of one exporter session.
pub const SEPARATOR: &[u8; 4] = b"SPLT";

const NOW_MS: i64 = 1_717_243_200_000;

const EXPORTERS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
];

/// Limits small enough that inputs reach every eviction path (scopes, templates,
/// held sets and bytes).
const TIGHT: Limits = Limits {
    max_templates: 8,
    max_scopes: 3,
    max_samplers_per_scope: 2,
    max_pending_sets: 4,
    max_pending_bytes: 2048,
    pending_max_age_ms: 60_000,
};

fn with_version(datagram: &[u8], version: u16) -> Vec<u8> {
    let mut d = datagram.to_vec();
    if let Some(v) = d.get_mut(..2) {
        v.copy_from_slice(&version.to_be_bytes());
    }
    d
}

fn decode(
    decoder: &mut Decoder,
    exporter: IpAddr,
    now_ms: i64,
    datagram: &[u8],
    version: u16,
    out: &mut Vec<FlowRecord>,
) {
    out.clear();
    let _ = decode_datagram(
        decoder,
        exporter,
        now_ms,
        &with_version(datagram, version),
        out,
    );
    let _ = decoder.pending_sets().count();
}

/// Cut `data` at every [`SEPARATOR`].
fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// Feed the chunks of `data` in sequence through one decoder with `limits`, from
/// varying exporters and with the clock advancing (so held data ages out).
fn session(data: &[u8], version: u16, limits: Limits, out: &mut Vec<FlowRecord>) {
    let mut decoder = Decoder::new(limits);
    let mut now = NOW_MS;
    for (i, chunk) in chunks(data).into_iter().enumerate() {
        let exporter = EXPORTERS[i % EXPORTERS.len()];
        decode(&mut decoder, exporter, now, chunk, version, out);
        assert!(
            decoder.template_count() <= limits.max_templates,
            "{} templates, limit {}",
            decoder.template_count(),
            limits.max_templates
        );
        now += i64::from(chunk.last().copied().unwrap_or(0)) * 500;
        let _ = decoder.take_expired(now);
    }
}

/// Fuzz one protocol. `stateful`: also replay the input as a session of datagrams.
pub fn run(data: &[u8], version: u16, stateful: bool) {
    let max = Limits::default().max_templates;
    let mut out = Vec::new();
    let mut decoder = Decoder::new(Limits::default());
    decode(&mut decoder, EXPORTERS[0], NOW_MS, data, version, &mut out);
    assert!(decoder.template_count() <= max);
    if stateful {
        session(data, version, Limits::default(), &mut out);
        session(data, version, TIGHT, &mut out);
    }
}
