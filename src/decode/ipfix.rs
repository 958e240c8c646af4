//! IPFIX (RFC 7011): template (2), options template (3) and data sets, template
//! withdrawal, enterprise-specific and variable-length fields.

use std::net::IpAddr;

use super::fields;
use super::plan::{FieldSpec, PlanKind, TimeBase, MAX_TEMPLATE_FIELDS};
use super::state::{Decoder, ScopeKey, SetOutcome, Withdrawal};
use super::v9::{build_plan, install, split_sets};
use super::{be, DecodeError, FlowRecord, PacketSummary, Protocol};

pub const HEADER_LEN: usize = 16;

pub fn decode(
    decoder: &mut Decoder,
    exporter: IpAddr,
    now_ms: i64,
    datagram: &[u8],
    out: &mut Vec<FlowRecord>,
) -> Result<PacketSummary, DecodeError> {
    let truncated = || DecodeError::TruncatedHeader {
        what: "IPFIX",
        len: datagram.len(),
        need: HEADER_LEN,
    };
    if datagram.len() < HEADER_LEN {
        return Err(truncated());
    }
    let length = be::u16_at(datagram, 2).ok_or_else(truncated)?;
    if usize::from(length) < HEADER_LEN || usize::from(length) > datagram.len() {
        return Err(DecodeError::MessageLength {
            length,
            len: datagram.len(),
        });
    }
    let export_time = be::u32_at(datagram, 4).ok_or_else(truncated)?;
    let sequence = be::u32_at(datagram, 8).ok_or_else(truncated)?;
    let domain = be::u32_at(datagram, 12).ok_or_else(truncated)?;
    let sets = split_sets(&datagram[HEADER_LEN..usize::from(length)], HEADER_LEN)?;

    let key = ScopeKey {
        exporter,
        protocol: Protocol::Ipfix,
        source_id: domain,
    };
    let base = TimeBase {
        export_ms: i64::from(export_time) * 1000,
        sys_uptime_ms: None,
        system_init_ms: None,
    };
    let start = out.len();
    let mut summary = PacketSummary {
        protocol: Protocol::Ipfix,
        source_id: domain,
        sequence,
        sequence_advance: Some(0),
        sys_uptime_ms: None,
        records: 0,
        held_sets: 0,
        set_errors: Vec::new(),
    };
    decoder.scope(key, now_ms);
    let mut data_records = 0u32;
    let mut data_failed = false;
    for (set_id, body) in sets {
        let result = match set_id {
            2 => templates(
                decoder,
                key,
                body,
                false,
                now_ms,
                out,
                &mut summary.set_errors,
            ),
            3 => templates(
                decoder,
                key,
                body,
                true,
                now_ms,
                out,
                &mut summary.set_errors,
            ),
            4..=255 | 0 | 1 => Ok(()),
            id => match decoder.data_set(key, id, base, body, now_ms, out) {
                Ok(SetOutcome::Held) => {
                    summary.held_sets += 1;
                    Ok(())
                }
                Ok(SetOutcome::Decoded(n)) => {
                    data_records = data_records.wrapping_add(n as u32);
                    Ok(())
                }
                Err(e) => {
                    data_failed = true;
                    Err(e)
                }
            },
        };
        if let Err(e) = result {
            summary.set_errors.push(e);
        }
    }
    // The sequence number counts data records; held sets and data sets that could not
    // be decoded have an unknown count.
    summary.sequence_advance = (summary.held_sets == 0 && !data_failed).then_some(data_records);
    summary.records = out.len() - start;
    Ok(summary)
}

fn templates(
    decoder: &mut Decoder,
    key: ScopeKey,
    body: &[u8],
    options: bool,
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
        at += 4;
        if count == 0 {
            // Withdrawal (RFC 7011 section 8.1): template id 2 withdraws every
            // template, 3 every options template, of the observation domain.
            let what = match template_id {
                2 => Withdrawal::All(PlanKind::Data),
                3 => Withdrawal::All(PlanKind::Options),
                id => Withdrawal::One(id),
            };
            decoder.withdraw(key, what, now_ms);
            continue;
        }
        if count > MAX_TEMPLATE_FIELDS {
            return Err(DecodeError::TooManyFields {
                template_id,
                count,
                max: MAX_TEMPLATE_FIELDS,
            });
        }
        if options {
            let scope_count = usize::from(
                be::u16_at(body, at).ok_or(DecodeError::TemplateOverrun { template_id })?,
            );
            at += 2;
            if scope_count == 0 || scope_count > count {
                return Err(DecodeError::BadScope {
                    template_id,
                    scope_len: scope_count,
                });
            }
        }
        let mut specs = Vec::with_capacity(count);
        for _ in 0..count {
            let overrun = DecodeError::TemplateOverrun { template_id };
            let raw_type = be::u16_at(body, at).ok_or(overrun.clone())?;
            let length = be::u16_at(body, at + 2).ok_or(overrun.clone())?;
            at += 4;
            let enterprise = raw_type & 0x8000 != 0;
            if enterprise {
                be::u32_at(body, at).ok_or(overrun)?;
                at += 4;
            }
            let field_type = raw_type & 0x7fff;
            if length == 0 {
                return Err(DecodeError::ZeroLengthField {
                    template_id,
                    field_type,
                });
            }
            // Scope fields are ordinary elements in IPFIX (selectorId, samplerId...), so
            // options records resolve through the same table as data records.
            let target = if enterprise {
                None
            } else {
                fields::target(field_type)
            };
            specs.push(FieldSpec { length, target });
        }
        let kind = if options {
            PlanKind::Options
        } else {
            PlanKind::Data
        };
        let plan = build_plan(template_id, kind, specs)?;
        install(decoder, key, template_id, plan, now_ms, out, errors);
    }
    Ok(())
}
