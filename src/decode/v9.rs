//! NetFlow v9 (RFC 3954): flowsets of templates (0), options templates (1) and data.

use std::net::IpAddr;

use super::fields;
use super::plan::{FieldSpec, Plan, PlanKind, TimeBase, MAX_TEMPLATE_FIELDS};
use super::state::{Decoder, ScopeKey, SetOutcome};
use super::{be, DecodeError, FlowRecord, PacketSummary, Protocol};

pub const HEADER_LEN: usize = 20;

/// Walk `[id u16][length u16][body]` sets, checking every length before anything is
/// decoded, so a malformed datagram changes no state. Shared with IPFIX.
pub(crate) fn split_sets(
    payload: &[u8],
    base_offset: usize,
) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    let mut sets = Vec::new();
    let mut at = 0usize;
    while payload.len() - at >= 4 {
        let set_id = be::u16_at(payload, at).unwrap_or(0);
        let length = be::u16_at(payload, at + 2).unwrap_or(0);
        let remaining = payload.len() - at;
        if length < 4 || usize::from(length) > remaining {
            return Err(DecodeError::SetLength {
                set_id,
                offset: base_offset + at,
                length,
                remaining,
            });
        }
        sets.push((set_id, &payload[at + 4..at + usize::from(length)]));
        at += usize::from(length);
    }
    Ok(sets)
}

/// Check a field list (non-empty, lengths already checked non-zero) and compile it.
pub(crate) fn build_plan(
    template_id: u16,
    kind: PlanKind,
    fields: Vec<FieldSpec>,
) -> Result<Plan, DecodeError> {
    if template_id < 256 {
        return Err(DecodeError::ReservedTemplateId { template_id });
    }
    if fields.is_empty() {
        return Err(DecodeError::EmptyTemplate { template_id });
    }
    let mut record_len = 0usize;
    for f in &fields {
        if f.length != super::plan::VARIABLE_LENGTH {
            record_len += usize::from(f.length);
        }
    }
    if record_len > usize::from(u16::MAX) {
        return Err(DecodeError::RecordTooLong {
            template_id,
            length: record_len,
        });
    }
    Ok(Plan::compile(kind, fields))
}

pub fn decode(
    decoder: &mut Decoder,
    exporter: IpAddr,
    now_ms: i64,
    datagram: &[u8],
    out: &mut Vec<FlowRecord>,
) -> Result<PacketSummary, DecodeError> {
    let truncated = || DecodeError::TruncatedHeader {
        what: "NetFlow v9",
        len: datagram.len(),
        need: HEADER_LEN,
    };
    if datagram.len() < HEADER_LEN {
        return Err(truncated());
    }
    let sys_uptime = be::u32_at(datagram, 4).ok_or_else(truncated)?;
    let unix_secs = be::u32_at(datagram, 8).ok_or_else(truncated)?;
    let sequence = be::u32_at(datagram, 12).ok_or_else(truncated)?;
    let source_id = be::u32_at(datagram, 16).ok_or_else(truncated)?;
    let sets = split_sets(&datagram[HEADER_LEN..], HEADER_LEN)?;

    let key = ScopeKey {
        exporter,
        protocol: Protocol::NetflowV9,
        source_id,
    };
    let base = TimeBase {
        export_ms: i64::from(unix_secs) * 1000,
        sys_uptime_ms: Some(sys_uptime),
        system_init_ms: None,
    };
    let start = out.len();
    let mut summary = PacketSummary {
        protocol: Protocol::NetflowV9,
        source_id,
        sequence,
        sequence_advance: Some(1),
        sys_uptime_ms: Some(sys_uptime),
        records: 0,
        held_sets: 0,
        set_errors: Vec::new(),
    };
    decoder.scope(key, now_ms);
    for (set_id, body) in sets {
        let result = match set_id {
            0 => templates(decoder, key, body, now_ms, out, &mut summary.set_errors),
            1 => options_templates(decoder, key, body, now_ms, out, &mut summary.set_errors),
            2..=255 => Ok(()),
            id => match decoder.data_set(key, id, base, body, now_ms, out) {
                Ok(SetOutcome::Held) => {
                    summary.held_sets += 1;
                    Ok(())
                }
                Ok(SetOutcome::Decoded(_)) => Ok(()),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            summary.set_errors.push(e);
        }
    }
    summary.records = out.len() - start;
    Ok(summary)
}

/// Install a template and decode any data that was held for it. Problems go to
/// `errors`; none of them stops the caller from reading the rest of its template set.
pub(crate) fn install(
    decoder: &mut Decoder,
    key: ScopeKey,
    template_id: u16,
    plan: Plan,
    now_ms: i64,
    out: &mut Vec<FlowRecord>,
    errors: &mut Vec<DecodeError>,
) {
    match decoder.add_template(key, template_id, plan, now_ms) {
        Ok(released) => {
            for (base, body) in released {
                if let Err(e) = decoder.data_set(key, template_id, base, &body, now_ms, out) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
}

fn templates(
    decoder: &mut Decoder,
    key: ScopeKey,
    body: &[u8],
    now_ms: i64,
    out: &mut Vec<FlowRecord>,
    errors: &mut Vec<DecodeError>,
) -> Result<(), DecodeError> {
    let mut at = 0usize;
    while body.len() - at >= 4 {
        let template_id = be::u16_at(body, at).unwrap_or(0);
        let count = usize::from(be::u16_at(body, at + 2).unwrap_or(0));
        if template_id == 0 && count == 0 {
            break; // padding
        }
        if count > MAX_TEMPLATE_FIELDS {
            return Err(DecodeError::TooManyFields {
                template_id,
                count,
                max: MAX_TEMPLATE_FIELDS,
            });
        }
        at += 4;
        if body.len() - at < count * 4 {
            return Err(DecodeError::TemplateOverrun { template_id });
        }
        let mut specs = Vec::with_capacity(count);
        for i in 0..count {
            let field_type = be::u16_at(body, at + i * 4).unwrap_or(0);
            let length = be::u16_at(body, at + i * 4 + 2).unwrap_or(0);
            if length == 0 {
                return Err(DecodeError::ZeroLengthField {
                    template_id,
                    field_type,
                });
            }
            specs.push(FieldSpec {
                length,
                target: fields::target(field_type),
            });
        }
        at += count * 4;
        let plan = build_plan(template_id, PlanKind::Data, specs)?;
        install(decoder, key, template_id, plan, now_ms, out, errors);
    }
    Ok(())
}

fn options_templates(
    decoder: &mut Decoder,
    key: ScopeKey,
    body: &[u8],
    now_ms: i64,
    out: &mut Vec<FlowRecord>,
    errors: &mut Vec<DecodeError>,
) -> Result<(), DecodeError> {
    let mut at = 0usize;
    while body.len() - at >= 6 {
        let template_id = be::u16_at(body, at).unwrap_or(0);
        let scope_len = usize::from(be::u16_at(body, at + 2).unwrap_or(0));
        let option_len = usize::from(be::u16_at(body, at + 4).unwrap_or(0));
        if template_id == 0 && scope_len == 0 && option_len == 0 {
            break; // padding
        }
        if scope_len % 4 != 0 || option_len % 4 != 0 {
            return Err(DecodeError::BadScope {
                template_id,
                scope_len,
            });
        }
        let count = (scope_len + option_len) / 4;
        if count > MAX_TEMPLATE_FIELDS {
            return Err(DecodeError::TooManyFields {
                template_id,
                count,
                max: MAX_TEMPLATE_FIELDS,
            });
        }
        at += 6;
        if body.len() - at < scope_len + option_len {
            return Err(DecodeError::TemplateOverrun { template_id });
        }
        let scope_count = scope_len / 4;
        let mut specs = Vec::with_capacity(count);
        for i in 0..count {
            let field_type = be::u16_at(body, at + i * 4).unwrap_or(0);
            let length = be::u16_at(body, at + i * 4 + 2).unwrap_or(0);
            if length == 0 {
                // Juniper sends a System scope of length 0: it takes no bytes in the
                // records, so leave it out. Zero-length option fields stay an error.
                if i < scope_count {
                    continue;
                }
                return Err(DecodeError::ZeroLengthField {
                    template_id,
                    field_type,
                });
            }
            // Scope field types (System, Interface, ...) are not information elements.
            let target = if i < scope_count {
                None
            } else {
                fields::target(field_type)
            };
            specs.push(FieldSpec { length, target });
        }
        at += count * 4;
        let plan = build_plan(template_id, PlanKind::Options, specs)?;
        install(decoder, key, template_id, plan, now_ms, out, errors);
        // Options template records are padded to 4 bytes in some exporters.
        while at < body.len() && at % 4 != 0 && body.get(at) == Some(&0) {
            at += 1;
        }
    }
    Ok(())
}
