//! Real exporters' datagrams, decoded by Flowstage and by tshark, compared record by
//! record.
//!
//! The captures live outside the repository, in `../shared/testdata/captures/` next to
//! the crate (see its README.md); nothing from them is copied here. Each test replays a
//! template capture and its data capture through one [`Decoder`], runs tshark on the
//! same frames (merged into one temporary pcap so tshark sees the templates first), and
//! compares every flow record tshark shows with ours: addresses, next hop, ports,
//! protocol, ToS, TCP flags, counters, interfaces, AS numbers, masks, VLANs, ICMP
//! type/code and flow times where tshark shows them, the sampling rate (from the
//! record itself, the exporter's options data or the v5 header) and the header
//! sequence number of every datagram.
//!
//! The sFlow captures are compared sample by sample the same way (`run_sflow`): every
//! flow sample tshark shows, with its raw packet header dissected, against our record.
//!
//! When the capture directory or tshark is missing, each test says so on stderr and
//! passes.

#![allow(clippy::unwrap_used)]

use crate::support::pcap;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use flowstage::decode::{decode_datagram, Decoder, FlowRecord, Limits, PacketSummary, Protocol};
use serde_json::{Map, Value};

/// IPFIX reverse-direction information elements (RFC 5103) use this enterprise number.
const REVERSE_PEN: u64 = 29305;

struct Case {
    name: &'static str,
    /// Replayed in this order through one decoder.
    files: &'static [&'static str],
    /// tshark cannot decode a data set that precedes its template in the same
    /// datagram; with this set it reads the frames twice and only the second pass is
    /// compared (our decoder holds such a set and decodes it once the template arrives).
    tshark_twice: bool,
    /// Whether the records are sampled (rate > 1) according to tshark.
    sampled: bool,
    /// Records expected, as a guard against both sides silently decoding nothing.
    min_records: usize,
}

fn skip_reason() -> Option<String> {
    let dir = captures_dir();
    if !dir.is_dir() {
        return Some(format!("capture directory {} not found", dir.display()));
    }
    match Command::new("tshark").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`tshark --version` failed with {}", out.status)),
        Err(e) => Some(format!("tshark is not available ({e})")),
    }
}

fn captures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/captures")
}

// ---------------------------------------------------------------------------------
// Our side.

struct Replayed {
    linktype: u32,
    frames: Vec<(pcap::Frame, pcap::Datagram)>,
    summaries: Vec<PacketSummary>,
    records: Vec<FlowRecord>,
}

fn replay(case: &Case) -> Replayed {
    let mut linktype = None;
    let mut frames = Vec::new();
    for file in case.files {
        let path = captures_dir().join(file);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: cannot read {}: {e}", case.name, path.display()));
        let pcap = pcap::parse(&bytes).unwrap_or_else(|e| panic!("{}: {file}: {e}", case.name));
        match linktype {
            None => linktype = Some(pcap.linktype),
            Some(l) => assert_eq!(l, pcap.linktype, "{}: {file}: mixed link types", case.name),
        }
        let datagrams =
            pcap::udp_datagrams(&bytes).unwrap_or_else(|e| panic!("{}: {file}: {e}", case.name));
        assert!(
            !datagrams.is_empty(),
            "{}: {file} holds no frames",
            case.name
        );
        frames.extend(datagrams);
    }
    let mut decoder = Decoder::new(Limits::default());
    let mut summaries = Vec::new();
    let mut records = Vec::new();
    for (i, (frame, d)) in frames.iter().enumerate() {
        let before = records.len();
        let summary = decode_datagram(
            &mut decoder,
            d.src,
            frame.unix_ms(),
            &d.payload,
            &mut records,
        )
        .unwrap_or_else(|e| panic!("{}: datagram {} failed to decode: {e}", case.name, i + 1));
        assert!(
            summary.set_errors.is_empty(),
            "{}: datagram {}: set errors {:?}",
            case.name,
            i + 1,
            summary.set_errors
        );
        assert_eq!(
            summary.records,
            records.len() - before,
            "{}: datagram {}",
            case.name,
            i + 1
        );
        summaries.push(summary);
    }
    let pending: Vec<_> = decoder.pending_sets().collect();
    assert!(
        pending.is_empty(),
        "{}: data still held for missing templates: {pending:?}",
        case.name
    );
    Replayed {
        linktype: linktype.unwrap_or(pcap::LINKTYPE_ETHERNET),
        frames,
        summaries,
        records,
    }
}

// ---------------------------------------------------------------------------------
// tshark's side.

/// One datagram as tshark decoded it.
#[derive(Debug)]
struct TsPacket {
    version: u16,
    sequence: u32,
    /// v5: engine type << 8 | engine id; v9: source id; IPFIX: observation domain.
    domain: u32,
    records: Vec<TsRecord>,
}

/// One flow record as tshark shows it; `None` where tshark shows no such field.
#[derive(Debug, Default)]
struct TsRecord {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    next_hop: Option<IpAddr>,
    bgp_next_hop: Option<IpAddr>,
    src_port: Option<u64>,
    dst_port: Option<u64>,
    proto: Option<u64>,
    tos: Option<u64>,
    tcp_flags: Option<u64>,
    src_mask: Option<u64>,
    dst_mask: Option<u64>,
    input_if: Option<u64>,
    output_if: Option<u64>,
    src_as: Option<u64>,
    dst_as: Option<u64>,
    src_vlan: Option<u64>,
    dst_vlan: Option<u64>,
    icmp_type_code: Option<u64>,
    bytes: Option<u64>,
    packets: Option<u64>,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    /// The sampling interval that applies to this record, resolved from the record,
    /// the exporter's options data or the v5 header; 1 when tshark shows none.
    sampling: u64,
    /// Where `sampling` came from, for messages.
    sampling_from: &'static str,
}

fn tshark(args: &[&str]) -> Vec<u8> {
    let out = Command::new("tshark")
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("running tshark {args:?}: {e}"));
    assert!(
        out.status.success(),
        "tshark {args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The UDP ports tshark sees in the file, after checking tshark's addresses, ports
/// and lengths against our pcap reader.
fn tshark_ports(case: &Case, file: &Path, frames: &[(pcap::Frame, pcap::Datagram)]) -> Vec<u16> {
    let out = tshark(&[
        "-n",
        "-r",
        &file.to_string_lossy(),
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-e",
        "ip.src",
        "-e",
        "ipv6.src",
        "-e",
        "udp.srcport",
        "-e",
        "udp.dstport",
        "-e",
        "udp.length",
    ]);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        frames.len(),
        "{}: tshark frame count",
        case.name
    );
    let mut ports = BTreeSet::new();
    for (i, (line, (_, d))) in lines.iter().zip(frames).enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        let col = |n: usize| cols.get(n).copied().unwrap_or("");
        // Only the outer header (a first value) matters.
        let first = |s: &str| s.split(',').next().unwrap_or("").to_string();
        let src = if col(0).is_empty() {
            first(col(1))
        } else {
            first(col(0))
        };
        let src: IpAddr = src
            .parse()
            .unwrap_or_else(|_| panic!("{}: frame {}: tshark source {src:?}", case.name, i + 1));
        let num = |n: usize| -> u64 { first(col(n)).parse().unwrap() };
        assert_eq!(src, d.src, "{}: frame {}: source address", case.name, i + 1);
        assert_eq!(
            num(2),
            u64::from(d.src_port),
            "{}: frame {}: source port",
            case.name,
            i + 1
        );
        assert_eq!(
            num(3),
            u64::from(d.dst_port),
            "{}: frame {}: dest port",
            case.name,
            i + 1
        );
        assert_eq!(
            num(4),
            d.payload.len() as u64 + 8,
            "{}: frame {}: UDP length",
            case.name,
            i + 1
        );
        ports.insert(d.dst_port);
    }
    ports.into_iter().collect()
}

/// The values of `key` in `obj`: one string, or several with `--no-duplicate-keys`.
fn values<'a>(obj: &'a Map<String, Value>, key: &str) -> Vec<&'a str> {
    match obj.get(key) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn num(s: &str) -> u64 {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("tshark value {s:?} is not a number"))
}

/// "944948.659000000" (seconds) as milliseconds, truncated.
fn secs_to_ms(s: &str) -> i64 {
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    whole.parse::<i64>().unwrap() * 1000 + frac.parse::<i64>().unwrap()
}

/// tshark's absolute time, "Oct  5, 2009 06:06:07.492059999 UTC", as Unix ms.
fn abs_time_ms(s: &str) -> i64 {
    let parts: Vec<&str> = s.split_whitespace().collect();
    assert!(
        parts.len() == 5 && parts[4] == "UTC",
        "unexpected tshark time {s:?}"
    );
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[0]).unwrap() as i64 + 1;
    let day: i64 = parts[1].trim_end_matches(',').parse().unwrap();
    let year: i64 = parts[2].parse().unwrap();
    let hms: Vec<&str> = parts[3].split(':').collect();
    let (h, m): (i64, i64) = (hms[0].parse().unwrap(), hms[1].parse().unwrap());
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + h * 3600 + m * 60) * 1000 + secs_to_ms(hms[2])
}

/// A child object whose key starts with `prefix` followed by an index; sorted by index.
fn indexed_children<'a>(
    obj: &'a Map<String, Value>,
    prefix: &str,
) -> Vec<(u64, &'a str, &'a Map<String, Value>)> {
    let mut out: Vec<_> = obj
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(prefix)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let n = digits.parse().ok()?;
            Some((n, k.as_str(), v.as_object()?))
        })
        .collect();
    out.sort_by_key(|(n, _, _)| *n);
    out
}

/// Where tshark's options data said the exporter samples, per exporter scope.
#[derive(Default)]
struct SamplingState {
    /// (exporter, domain, template id) of options templates.
    options_templates: BTreeSet<(IpAddr, u32, u64)>,
    /// Templates with reverse elements, each after its forward counterpart.
    reverse_ok: BTreeSet<(IpAddr, u32, u64)>,
    samplers: HashMap<(IpAddr, u32, u64), u64>,
    default_rate: HashMap<(IpAddr, u32), u64>,
}

/// The sampling interval a flow or options record states itself.
fn own_rate(flow: &Flow<'_>) -> Option<u64> {
    if let Some(i) = flow.num("cflow.sampling_interval").filter(|&i| i > 0) {
        return Some(i);
    }
    if let Some(i) = flow.num("cflow.sampler_random_interval").filter(|&i| i > 0) {
        return Some(i);
    }
    if let Some(i) = flow
        .num("cflow.sampling_packet_interval")
        .filter(|&i| i > 0)
    {
        let space = flow.num("cflow.sampling_packet_space").unwrap_or(0);
        return Some((i + space) / i);
    }
    None
}

/// One flow object of tshark's JSON, with the rule for duplicated keys.
struct Flow<'a> {
    obj: &'a Map<String, Value>,
    /// The template has RFC 5103 reverse elements, each after its forward one, so the
    /// first of duplicated values is the forward direction.
    reverse_ok: bool,
    what: String,
}

impl<'a> Flow<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        let mut vals = values(self.obj, key);
        if vals.is_empty() {
            // Times sit one level down, in cflow.timedelta_tree.
            if let Some(Value::Object(tree)) = self.obj.get("cflow.timedelta_tree") {
                vals = values(tree, key);
            }
        }
        assert!(
            vals.len() <= 1 || self.reverse_ok,
            "{}: tshark shows {key} {} times and the template has no reverse elements",
            self.what,
            vals.len()
        );
        vals.first().copied()
    }

    fn num(&self, key: &str) -> Option<u64> {
        self.get(key).map(num)
    }

    fn addr(&self, v4: &str, v6: &str) -> Option<IpAddr> {
        self.get(v4).or_else(|| self.get(v6)).map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{}: address {s:?}", self.what))
        })
    }
}

fn tshark_packets(
    case: &Case,
    file: &Path,
    ports: &[u16],
    exporters: &[IpAddr],
    warmup: usize,
) -> Vec<TsPacket> {
    let file = file.to_string_lossy();
    let mut args = vec!["-n".to_string(), "-r".to_string(), file.to_string()];
    for port in ports {
        args.push("-d".into());
        args.push(format!("udp.port=={port},cflow"));
    }
    for a in ["-T", "json", "--no-duplicate-keys", "-J", "cflow"] {
        args.push(a.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let json: Value = serde_json::from_slice(&tshark(&args)).expect("tshark JSON");
    let packets = json.as_array().expect("tshark JSON is an array of packets");
    assert_eq!(
        packets.len(),
        exporters.len(),
        "{}: tshark packet count",
        case.name
    );

    let mut state = SamplingState::default();
    let mut out = Vec::new();
    for (i, (pkt, &exporter)) in packets.iter().zip(exporters).enumerate() {
        let what = format!("{}: tshark packet {}", case.name, i + 1);
        let cflow = pkt
            .pointer("/_source/layers/cflow")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{what}: not decoded as NetFlow/IPFIX"));
        let header = |key: &str| -> u64 {
            let v = values(cflow, key);
            assert_eq!(v.len(), 1, "{what}: header field {key}");
            num(v[0])
        };
        let tree = |key: &str| -> Option<u64> {
            cflow
                .get("cflow.timestamp_tree")
                .and_then(Value::as_object)
                .and_then(|t| values(t, key).first().map(|s| num(s)))
        };
        let version = header("cflow.version") as u16;
        let sequence = header("cflow.sequence") as u32;
        let (domain, export_ms, uptime_ms) = match version {
            5 => {
                let nsecs = tree("cflow.unix_nsecs").unwrap_or(0);
                (
                    (header("cflow.engine_type") << 8 | header("cflow.engine_id")) as u32,
                    tree("cflow.unix_secs").unwrap() as i64 * 1000 + (nsecs / 1_000_000) as i64,
                    Some(secs_to_ms(values(cflow, "cflow.sysuptime")[0])),
                )
            }
            9 => (
                header("cflow.source_id") as u32,
                tree("cflow.unix_secs").unwrap() as i64 * 1000,
                Some(secs_to_ms(values(cflow, "cflow.sysuptime")[0])),
            ),
            10 => (
                header("cflow.od_id") as u32,
                tree("cflow.exporttime").unwrap() as i64 * 1000,
                None,
            ),
            v => panic!("{what}: version {v}"),
        };
        let v5_rate = (version == 5).then(|| header("cflow.samplerate").max(1));

        // (flow object, template key) in record order.
        let mut flows: Vec<(String, &Map<String, Value>, Option<u64>)> = Vec::new();
        if version == 5 {
            for (n, _, obj) in indexed_children(cflow, "pdu ") {
                flows.push((format!("{what} pdu {n}"), obj, None));
            }
        } else {
            let mut sets = indexed_children(cflow, "FlowSet ");
            sets.extend(indexed_children(cflow, "Set "));
            sets.sort_by_key(|(n, _, _)| *n);
            for (n, key, set) in sets {
                let set_id = num(values(set, "cflow.flowset_id")[0]);
                match set_id {
                    0..=3 => {
                        let options = set_id == 1 || set_id == 3;
                        for t in set.values().filter_map(Value::as_object) {
                            let Some(id) = values(t, "cflow.template_id").first().map(|s| num(s))
                            else {
                                continue;
                            };
                            let scope = (exporter, domain, id);
                            if options {
                                state.options_templates.insert(scope);
                            } else {
                                state.options_templates.remove(&scope);
                            }
                            if template_reverse_ok(t) {
                                state.reverse_ok.insert(scope);
                            } else {
                                state.reverse_ok.remove(&scope);
                            }
                        }
                    }
                    4..=255 => {}
                    _ => {
                        let set_flows = indexed_children(set, "Flow ");
                        // In a first pass, tshark may not know the template yet.
                        assert!(
                            !set_flows.is_empty() || i < warmup,
                            "{what}: {key}: tshark decoded no flows (template unknown?)"
                        );
                        for (f, _, obj) in set_flows {
                            flows.push((format!("{what} set {n} flow {f}"), obj, Some(set_id)));
                        }
                    }
                }
            }
        }

        let mut records = Vec::new();
        for (fwhat, obj, template) in flows {
            let scope = template.map(|t| (exporter, domain, t));
            let flow = Flow {
                obj,
                reverse_ok: scope.is_some_and(|s| state.reverse_ok.contains(&s)),
                what: fwhat,
            };
            if scope.is_some_and(|s| state.options_templates.contains(&s)) {
                if let Some(rate) = own_rate(&flow) {
                    let sampler = flow
                        .num("cflow.sampler_id")
                        .or(flow.num("cflow.selector_id"));
                    match sampler {
                        Some(id) => {
                            state.samplers.insert((exporter, domain, id), rate);
                        }
                        None => {
                            state.default_rate.insert((exporter, domain), rate);
                        }
                    }
                }
                continue;
            }
            let sampler = flow
                .num("cflow.sampler_id")
                .or(flow.num("cflow.selector_id"));
            let (sampling, sampling_from) = if let Some(r) = own_rate(&flow) {
                (r, "the record's own sampling fields")
            } else if let Some(&r) =
                sampler.and_then(|id| state.samplers.get(&(exporter, domain, id)))
            {
                (r, "options data for the record's sampler id")
            } else if let Some(&r) = state.default_rate.get(&(exporter, domain)) {
                (r, "options data without a sampler id")
            } else if let Some(r) = v5_rate {
                (r, "the v5 header")
            } else {
                (1, "nothing (unsampled)")
            };
            let time = |abs: &str, rel: &str| -> Option<i64> {
                if let Some(s) = flow.get(abs) {
                    return Some(abs_time_ms(s));
                }
                let rel = secs_to_ms(flow.get(rel)?);
                Some(export_ms - (uptime_ms? - rel))
            };
            let icmp = flow.num("cflow.icmp_type_code_ipv4").or_else(|| {
                let t = flow
                    .num("cflow.icmp_ipv4_type")
                    .or(flow.num("cflow.icmp_ipv6_type"));
                let c = flow
                    .num("cflow.icmp_ipv4_code")
                    .or(flow.num("cflow.icmp_ipv6_code"));
                (t.is_some() || c.is_some()).then(|| t.unwrap_or(0) << 8 | c.unwrap_or(0))
            });
            records.push(TsRecord {
                src: flow.addr("cflow.srcaddr", "cflow.srcaddrv6"),
                dst: flow.addr("cflow.dstaddr", "cflow.dstaddrv6"),
                next_hop: flow.addr("cflow.nexthop", "cflow.nexthopv6"),
                bgp_next_hop: flow.addr("cflow.bgpnexthop", "cflow.bgpnexthopv6"),
                src_port: flow.num("cflow.srcport"),
                dst_port: flow.num("cflow.dstport"),
                proto: flow.num("cflow.protocol"),
                tos: flow.num("cflow.tos"),
                tcp_flags: flow.num("cflow.tcpflags"),
                src_mask: flow.num("cflow.srcmask").or(flow.num("cflow.srcmaskv6")),
                dst_mask: flow.num("cflow.dstmask").or(flow.num("cflow.dstmaskv6")),
                input_if: flow.num("cflow.inputint"),
                output_if: flow.num("cflow.outputint"),
                src_as: flow.num("cflow.srcas"),
                dst_as: flow.num("cflow.dstas"),
                src_vlan: flow.num("cflow.vlanid").or(flow.num("cflow.dot1q_vlan_id")),
                dst_vlan: flow.num("cflow.post_vlanid"),
                icmp_type_code: icmp,
                bytes: flow.num("cflow.octets").or(flow.num("cflow.octetsexp")),
                packets: flow.num("cflow.packets").or(flow.num("cflow.packetsexp")),
                start_ms: time("cflow.abstimestart", "cflow.timestart"),
                end_ms: time("cflow.abstimeend", "cflow.timeend"),
                sampling,
                sampling_from,
            });
        }
        out.push(TsPacket {
            version,
            sequence,
            domain,
            records,
        });
    }
    out
}

/// Whether every RFC 5103 reverse element of a template (tshark's JSON of it) comes
/// after the forward element of the same type, so that the first value tshark shows
/// for a duplicated field is the forward one. False when there are no reverse elements.
fn template_reverse_ok(template: &Map<String, Value>) -> bool {
    let mut fields: Vec<(u64, u64, u64)> = indexed_children(template, "Field (")
        .into_iter()
        .filter_map(|(i, _, f)| {
            let ty = values(f, "cflow.template_ipfix_field_type")
                .first()
                .map(|s| num(s))?;
            let pen = values(f, "cflow.template_ipfix_field_pen")
                .first()
                .map_or(0, |s| num(s));
            Some((i, ty, pen))
        })
        .collect();
    fields.sort();
    let reverse: Vec<_> = fields.iter().filter(|f| f.2 == REVERSE_PEN).collect();
    !reverse.is_empty()
        && reverse.iter().all(|&&(i, ty, _)| {
            fields
                .iter()
                .any(|&(j, t, pen)| j < i && t == ty && pen == 0)
        })
}

// ---------------------------------------------------------------------------------
// The comparison.

fn run(case: Case) {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping {}: {reason}", case.name);
        return;
    }
    let ours = replay(&case);

    let mut tshark_frames: Vec<pcap::Frame> = ours.frames.iter().map(|(f, _)| f.clone()).collect();
    let mut exporters: Vec<IpAddr> = ours.frames.iter().map(|(_, d)| d.src).collect();
    if case.tshark_twice {
        tshark_frames.extend_from_within(..);
        exporters.extend_from_within(..);
    }
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged.pcap");
    std::fs::write(&merged, pcap::write(ours.linktype, &tshark_frames)).unwrap();
    let all_frames: Vec<_> = if case.tshark_twice {
        ours.frames.iter().chain(&ours.frames).cloned().collect()
    } else {
        ours.frames.clone()
    };
    // Packets of tshark's first pass, which are not compared.
    let warmup = if case.tshark_twice {
        ours.frames.len()
    } else {
        0
    };
    let ports = tshark_ports(&case, &merged, &all_frames);
    let mut packets = tshark_packets(&case, &merged, &ports, &exporters, warmup);
    packets.drain(..warmup);

    // Datagram headers.
    assert_eq!(
        packets.len(),
        ours.summaries.len(),
        "{}: datagrams",
        case.name
    );
    for (i, (p, s)) in packets.iter().zip(&ours.summaries).enumerate() {
        let protocol = match p.version {
            5 => Protocol::NetflowV5,
            9 => Protocol::NetflowV9,
            _ => Protocol::Ipfix,
        };
        let what = format!("{}: datagram {}", case.name, i + 1);
        assert_eq!(s.protocol, protocol, "{what}: protocol");
        assert_eq!(
            s.sequence, p.sequence,
            "{what}: sequence number (tshark cflow.sequence)"
        );
        assert_eq!(
            s.source_id, p.domain,
            "{what}: source id / observation domain"
        );
        assert_eq!(
            s.records,
            p.records.len(),
            "{what}: flow records in the datagram"
        );
    }

    // Records.
    let theirs: Vec<&TsRecord> = packets.iter().flat_map(|p| &p.records).collect();
    assert_eq!(
        ours.records.len(),
        theirs.len(),
        "{}: flow records",
        case.name
    );
    assert!(
        ours.records.len() >= case.min_records,
        "{}: only {} records",
        case.name,
        ours.records.len()
    );
    let mut problems = Vec::new();
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    for (i, (r, t)) in ours.records.iter().zip(&theirs).enumerate() {
        let mut check = |field: &str, ours: String, theirs: String| {
            if ours != theirs {
                problems.push(format!(
                    "record {}: {field}: ours {ours}, tshark {theirs}",
                    i + 1
                ));
            }
        };
        let n = |v: Option<u64>| v.unwrap_or(0).to_string();
        check(
            "src_addr",
            r.src_addr.to_string(),
            t.src.unwrap_or(unspecified).to_string(),
        );
        check(
            "dst_addr",
            r.dst_addr.to_string(),
            t.dst.unwrap_or(unspecified).to_string(),
        );
        // Our next hop is the IP next hop, else the BGP next hop; an all-zero address
        // means none.
        let hop = |a: Option<IpAddr>| a.filter(|a| !a.is_unspecified());
        check(
            "next_hop",
            format!("{:?}", hop(r.next_hop)),
            format!("{:?}", hop(t.next_hop).or(hop(t.bgp_next_hop))),
        );
        check("src_port", r.src_port.to_string(), n(t.src_port));
        check("dst_port", r.dst_port.to_string(), n(t.dst_port));
        check("proto", r.proto.to_string(), n(t.proto));
        check("tos", r.tos.to_string(), n(t.tos));
        check("tcp_flags", r.tcp_flags.to_string(), n(t.tcp_flags));
        check("src_mask", r.src_mask.to_string(), n(t.src_mask));
        check("dst_mask", r.dst_mask.to_string(), n(t.dst_mask));
        check("input_if", r.input_if.to_string(), n(t.input_if));
        check("output_if", r.output_if.to_string(), n(t.output_if));
        check("src_as", r.src_as.to_string(), n(t.src_as));
        check("dst_as", r.dst_as.to_string(), n(t.dst_as));
        check("bytes", r.bytes.to_string(), n(t.bytes));
        check("packets", r.packets.to_string(), n(t.packets));
        check(
            "src_vlan",
            format!("{:?}", r.src_vlan),
            format!("{:?}", t.src_vlan),
        );
        check(
            "dst_vlan",
            format!("{:?}", r.dst_vlan),
            format!("{:?}", t.dst_vlan),
        );
        if let Some(tc) = t.icmp_type_code {
            check(
                "icmp_type_code",
                format!("{:?}", r.icmp_type_code),
                format!("{:?}", Some(tc)),
            );
        }
        if let Some(ms) = t.start_ms {
            check("start_ms", r.start_ms.to_string(), ms.to_string());
        }
        if let Some(ms) = t.end_ms {
            check("end_ms", r.end_ms.to_string(), ms.to_string());
        }
        if u64::from(r.sampling_rate) != t.sampling {
            check(
                "sampling_rate",
                r.sampling_rate.to_string(),
                format!("{} (from {})", t.sampling, t.sampling_from),
            );
        }
        check(
            "scaled_bytes",
            r.scaled_bytes().to_string(),
            n(t.bytes.map(|b| b * t.sampling)),
        );
        check(
            "scaled_packets",
            r.scaled_packets().to_string(),
            n(t.packets.map(|p| p * t.sampling)),
        );
        if case.sampled != (t.sampling > 1) {
            problems.push(format!(
                "record {}: the case expects sampled={}, tshark's interval is {}",
                i + 1,
                case.sampled,
                t.sampling
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}: {} differences from tshark:\n{}",
        case.name,
        problems.len(),
        problems.join("\n")
    );
    let rates: BTreeMap<u32, usize> = ours.records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.sampling_rate).or_default() += 1;
        m
    });
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &theirs {
        for name in t.shown() {
            *shown.entry(name).or_default() += 1;
        }
    }
    let partial: Vec<String> = shown
        .iter()
        .filter(|(_, &n)| n != theirs.len())
        .map(|(k, n)| format!("{k} ({n})"))
        .collect();
    let full: Vec<&str> = shown
        .iter()
        .filter(|(_, &n)| n == theirs.len())
        .map(|(k, _)| *k)
        .collect();
    eprintln!(
        "{}: {} datagram(s) on UDP port(s) {ports:?}, {} flow records match tshark; \
         sampling rates {rates:?}; tshark showed {} in every record, {} in some",
        case.name,
        ours.summaries.len(),
        ours.records.len(),
        full.join(","),
        if partial.is_empty() {
            "nothing else".to_string()
        } else {
            partial.join(",")
        },
    );
}

impl TsRecord {
    /// The fields tshark showed for this record.
    fn shown(&self) -> Vec<&'static str> {
        let addrs = [
            ("src", self.src),
            ("dst", self.dst),
            ("nexthop", self.next_hop),
            ("bgpnexthop", self.bgp_next_hop),
        ];
        let nums = [
            ("srcport", self.src_port),
            ("dstport", self.dst_port),
            ("proto", self.proto),
            ("tos", self.tos),
            ("tcpflags", self.tcp_flags),
            ("srcmask", self.src_mask),
            ("dstmask", self.dst_mask),
            ("inputint", self.input_if),
            ("outputint", self.output_if),
            ("srcas", self.src_as),
            ("dstas", self.dst_as),
            ("vlan", self.src_vlan),
            ("postvlan", self.dst_vlan),
            ("icmp", self.icmp_type_code),
            ("octets", self.bytes),
            ("packets", self.packets),
        ];
        let times = [("start", self.start_ms), ("end", self.end_ms)];
        addrs
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .chain(nums.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k))
            .chain(times.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k))
            .collect()
    }
}

#[test]
fn netflow_v5() {
    run(Case {
        name: "nfv5",
        files: &["nfv5.pcap"],
        tshark_twice: false,
        sampled: false,
        min_records: 20,
    });
}

#[test]
fn netflow_v9_template_then_data() {
    run(Case {
        name: "v9 template+data",
        files: &["template.pcap", "data.pcap"],
        tshark_twice: false,
        sampled: false,
        min_records: 1,
    });
}

/// Cisco IOS-XE: options data maps sampler id 1 to its interval; the data records of
/// the same exporter (template.pcap, data.pcap) name that sampler in FLOW_SAMPLER_ID.
/// The options come first so that every data record is scaled.
#[test]
fn netflow_v9_sampler_from_options_data() {
    run(Case {
        name: "v9 options (sampler) + template+data",
        files: &[
            "options-template.pcap",
            "options-data.pcap",
            "template.pcap",
            "data.pcap",
        ],
        tshark_twice: false,
        sampled: true,
        min_records: 1,
    });
}

/// SAMPLING_INTERVAL carried in every data record.
#[test]
fn netflow_v9_sampling_interval_in_data_template() {
    run(Case {
        name: "v9 samplingrate",
        files: &["samplingrate-template.pcap", "samplingrate-data.pcap"],
        tshark_twice: false,
        sampled: true,
        min_records: 1,
    });
}

/// IPv4 and IPv6 templates with flowStart/EndMilliseconds; the template datagram also
/// carries data.
#[test]
fn netflow_v9_icmp() {
    run(Case {
        name: "v9 icmp",
        files: &["icmp-template.pcap", "icmp-data.pcap"],
        tshark_twice: false,
        sampled: false,
        min_records: 1,
    });
}

/// Juniper: one datagram with a data set before its template, an options template
/// whose System scope has length 0, and options data with the exporter-wide interval.
#[test]
fn netflow_v9_data_before_templates_in_one_datagram() {
    run(Case {
        name: "v9 data+templates",
        files: &["data+templates.pcap"],
        tshark_twice: true,
        sampled: true,
        min_records: 1,
    });
}

/// ipfixprobe: IPv4/IPv6 templates with RFC 5103 reverse elements (ignored by us;
/// tshark shows them as second values of the same fields) and NTP-format times.
#[test]
fn ipfix_ipfixprobe() {
    run(Case {
        name: "ipfixprobe",
        files: &["ipfixprobe-templates.pcap", "ipfixprobe-data.pcap"],
        tshark_twice: false,
        sampled: false,
        min_records: 1,
    });
}

// ---------------------------------------------------------------------------------
// sFlow v5: every flow sample tshark shows, compared with our record for it.

/// tshark's JSON with the order of keys and repeated keys kept (a sample's records, and
/// the samples of a datagram, are keyed by name and may repeat).
#[derive(Debug)]
enum Node {
    Str(String),
    List(Vec<Node>),
    Obj(Vec<(String, Node)>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tshark JSON")
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::Str(s.to_string()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = a.next_element()? {
                    v.push(n);
                }
                Ok(Node::List(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some((k, n)) = a.next_entry::<String, Node>()? {
                    v.push((k, n));
                }
                Ok(Node::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Node {
    fn entries(&self) -> &[(String, Node)] {
        match self {
            Node::Obj(v) => v,
            _ => &[],
        }
    }
    /// The first direct child named `key`.
    fn child(&self, key: &str) -> Option<&Node> {
        self.entries()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n)
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.child(key)? {
            Node::Str(s) => Some(s),
            Node::List(l) => l.iter().find_map(|n| match n {
                Node::Str(s) => Some(s.as_str()),
                _ => None,
            }),
            _ => None,
        }
    }
    fn num(&self, key: &str) -> Option<u64> {
        self.str(key).map(num)
    }
    /// Every string value of `key`, anywhere below this node, in order.
    fn all(&self, key: &str, out: &mut Vec<String>) {
        for (k, n) in self.entries() {
            match n {
                Node::Str(s) if k == key => out.push(s.clone()),
                Node::List(l) if k == key => out.extend(l.iter().filter_map(|n| match n {
                    Node::Str(s) => Some(s.clone()),
                    _ => None,
                })),
                Node::Obj(_) => n.all(key, out),
                _ => {}
            }
        }
    }
}

/// What tshark says one flow sample should become, as our record's fields.
fn tshark_sflow_record(sample: &Node, what: &str) -> FlowRecord {
    let expanded = sample.num("sflow_245.sampletype") == Some(3);
    let fs = |k: &str| {
        sample
            .num(&format!("sflow.flow_sample.{k}"))
            .unwrap_or_else(|| panic!("{what}: tshark shows no sflow.flow_sample.{k}"))
    };
    // Our rules on tshark's values: only interface format 0 names an interface, and
    // 0x3fffffff ("the agent itself") is no interface.
    let iface = |format: u64, value: u64| {
        if format != 0 || value == 0x3fff_ffff {
            0
        } else {
            value as u32
        }
    };
    let (input_if, output_if) = if expanded {
        (
            iface(fs("input_interface_format"), fs("input_interface_value")),
            iface(fs("output_interface.format"), fs("output_interface_value")),
        )
    } else {
        let out = sample
            .child("sflow.flow_sample.output_interface_tree")
            .unwrap_or_else(|| panic!("{what}: no output interface tree"));
        (
            iface(0, fs("input_interface")),
            iface(
                out.num("sflow.flow_sample.output_interface_format")
                    .unwrap(),
                out.num("sflow.flow_sample.output_interface_value").unwrap(),
            ),
        )
    };
    let mut r = FlowRecord {
        input_if,
        output_if,
        packets: 1,
        sampling_rate: fs("sampling_rate").max(1) as u32,
        ..FlowRecord::default()
    };
    let vlan = |v: Option<u64>| v.filter(|v| *v <= 4095).map(|v| v as u16);
    let mut switch = None;
    let mut router_hop = None;
    let mut gateway_hop = None;
    let hop = |s: Option<&str>| {
        s.map(|s| s.parse::<IpAddr>().unwrap())
            .filter(|a| !a.is_unspecified())
    };
    let mut headers = 0;
    for (name, rec) in sample.entries() {
        match name.as_str() {
            "Raw packet header" => {
                headers += 1;
                r.bytes = rec.num("sflow_245.header.frame_length").unwrap();
                let Some(tree) = rec.child("sflow_245.header_tree") else {
                    continue;
                };
                if let Some(v) = tree.child("vlan") {
                    r.src_vlan = v.num("vlan.id").map(|v| v as u16);
                }
                if let Some(ip) = tree.child("ip") {
                    r.src_addr = ip.str("ip.src").unwrap().parse().unwrap();
                    r.dst_addr = ip.str("ip.dst").unwrap().parse().unwrap();
                    r.proto = ip.num("ip.proto").unwrap() as u8;
                    r.tos = ip.num("ip.dsfield").unwrap() as u8;
                } else if let Some(ip) = tree.child("ipv6") {
                    r.src_addr = ip.str("ipv6.src").unwrap().parse().unwrap();
                    r.dst_addr = ip.str("ipv6.dst").unwrap().parse().unwrap();
                    r.proto = ip.num("ipv6.nxt").unwrap() as u8;
                    r.tos = ip.num("ipv6.tclass").unwrap() as u8;
                }
                for l4 in ["tcp", "udp"] {
                    if let Some(t) = tree.child(l4) {
                        r.src_port = t.num(&format!("{l4}.srcport")).unwrap() as u16;
                        r.dst_port = t.num(&format!("{l4}.dstport")).unwrap() as u16;
                        if l4 == "tcp" {
                            r.tcp_flags = (t.num("tcp.flags").unwrap() & 0xff) as u8;
                        }
                    }
                }
                for icmp in ["icmp", "icmpv6"] {
                    if let Some(t) = tree.child(icmp) {
                        let ty = t.num(&format!("{icmp}.type")).unwrap();
                        let code = t.num(&format!("{icmp}.code")).unwrap();
                        r.icmp_type_code = Some((ty << 8 | code) as u16);
                    }
                }
            }
            "Extended switch data" => {
                switch = Some((
                    vlan(rec.num("sflow_245.vlan.in")),
                    vlan(rec.num("sflow_245.vlan.out")),
                ));
            }
            "Extended router data" => {
                router_hop = hop(rec.str("sflow_245.nexthop"));
                r.src_mask = rec.num("sflow_245.nexthop.src_mask").unwrap() as u8;
                r.dst_mask = rec.num("sflow_245.nexthop.dst_mask").unwrap() as u8;
            }
            "Extended gateway data" => {
                gateway_hop = hop(rec.str("sflow_245.nexthop"));
                r.src_as = rec.num("sflow_245.srcAS").unwrap() as u32;
                // The path is in the AS-type trees; the communities (which tshark
                // also labels dstAS) are not.
                let mut path = Vec::new();
                for (k, n) in rec.entries() {
                    if k == "sflow.as_type_tree" {
                        n.all("sflow_245.dstAS", &mut path);
                    }
                }
                r.dst_as = path.last().map_or(0, |s| num(s) as u32);
            }
            _ => {}
        }
    }
    assert_eq!(headers, 1, "{what}: raw packet headers");
    if let Some((src, dst)) = switch {
        r.src_vlan = src.or(r.src_vlan);
        r.dst_vlan = dst;
    }
    r.next_hop = router_hop.or(gateway_hop);
    r
}

fn run_sflow(name: &str, file: &str, min_records: usize) {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping {name}: {reason}");
        return;
    }
    let path = captures_dir().join(file);
    let bytes = std::fs::read(&path).unwrap();
    let frames = pcap::udp_datagrams(&bytes).unwrap();
    assert!(!frames.is_empty(), "{name}: no frames");
    let case = Case {
        name: "sflow",
        files: &[],
        tshark_twice: false,
        sampled: false,
        min_records,
    };
    let ports = tshark_ports(&case, &path, &frames);

    let mut decoder = Decoder::new(Limits::default());
    let mut summaries = Vec::new();
    let mut ours = Vec::new();
    let mut counters = Vec::new();
    let mut times = Vec::new();
    for (i, (frame, d)) in frames.iter().enumerate() {
        let before = ours.len();
        let s = flowstage::decode::decode_datagram_with_counters(
            &mut decoder,
            d.src,
            frame.unix_ms(),
            &d.payload,
            &mut ours,
            &mut counters,
        )
        .unwrap_or_else(|e| panic!("{name}: datagram {} failed: {e}", i + 1));
        assert!(s.set_errors.is_empty(), "{name}: {:?}", s.set_errors);
        times.extend(std::iter::repeat_n(frame.unix_ms(), ours.len() - before));
        summaries.push(s);
    }

    let mut args = vec!["-n".to_string(), "-r".into(), path.to_string_lossy().into()];
    for port in &ports {
        args.push("-d".into());
        args.push(format!("udp.port=={port},sflow"));
    }
    args.extend(["-T", "json", "-J", "sflow"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let json: Node = serde_json::from_slice(&tshark(&args)).expect("tshark JSON");
    let Node::List(packets) = json else {
        panic!("{name}: tshark JSON is not a list")
    };
    assert_eq!(packets.len(), frames.len(), "{name}: tshark packets");
    let mut theirs = Vec::new();
    let mut counter_samples = 0;
    for (i, (p, s)) in packets.iter().zip(&summaries).enumerate() {
        let what = format!("{name}: datagram {}", i + 1);
        let sflow = p
            .child("_source")
            .and_then(|s| s.child("layers"))
            .and_then(|l| l.child("sflow"))
            .unwrap_or_else(|| panic!("{what}: not decoded as sFlow"));
        assert_eq!(sflow.num("sflow_245.version"), Some(5), "{what}");
        assert_eq!(s.protocol, Protocol::Sflow, "{what}");
        assert_eq!(
            Some(u64::from(s.sequence)),
            sflow.num("sflow_245.sequence_number"),
            "{what}: sequence"
        );
        assert_eq!(
            Some(u64::from(s.source_id)),
            sflow.num("sflow_245.sub_agent_id"),
            "{what}: sub-agent id"
        );
        assert_eq!(
            s.sys_uptime_ms.map(u64::from),
            sflow.num("sflow_245.sysuptime"),
            "{what}: uptime"
        );
        let mut samples = 0;
        let mut flow_samples = 0;
        for (key, sample) in sflow.entries() {
            let Some(kind) = sample.num("sflow_245.sampletype") else {
                continue;
            };
            samples += 1;
            match kind {
                1 | 3 => {
                    flow_samples += 1;
                    let swhat = format!("{what}: {key}");
                    let mut r = tshark_sflow_record(sample, &swhat);
                    r.start_ms = times.get(theirs.len()).copied().unwrap_or_default();
                    r.end_ms = r.start_ms;
                    theirs.push((swhat, r));
                }
                2 | 4 => counter_samples += 1,
                _ => {}
            }
        }
        assert_eq!(
            Some(samples),
            sflow.num("sflow_245.numsamples"),
            "{what}: samples"
        );
        assert_eq!(s.records, flow_samples, "{what}: flow samples");
    }
    assert_eq!(ours.len(), theirs.len(), "{name}: flow records");
    assert!(
        ours.len() >= min_records,
        "{name}: only {} records",
        ours.len()
    );
    assert_eq!(
        counters.len(),
        counter_samples,
        "{name}: counter samples (each with one generic interface record)"
    );
    for (r, (what, t)) in ours.iter().zip(&theirs) {
        assert_eq!(r, t, "{what}: ours (left) and tshark's (right)");
        assert_eq!(
            (r.scaled_bytes(), r.scaled_packets()),
            (
                t.bytes * u64::from(t.sampling_rate),
                u64::from(t.sampling_rate)
            ),
            "{what}: scaled"
        );
    }
    let rates: BTreeSet<u32> = ours.iter().map(|r| r.sampling_rate).collect();
    eprintln!(
        "{name}: {} datagram(s) on UDP port(s) {ports:?}, {} flow samples match tshark in \
         every field (addresses, ports, proto, ToS, TCP flags, ICMP, frame length, \
         sampling rate {rates:?}, interfaces, VLANs, next hop, masks, AS); {} counter samples",
        frames.len(),
        ours.len(),
        counters.len()
    );
}

/// Five flow samples of a router: IPv6 and IPv4 over Ethernet, extended switch data
/// with unknown VLANs (all ones), router and gateway data with and without an AS path.
#[test]
fn sflow_router_samples() {
    run_sflow("sflow data-1140", "data-1140.pcap", 5);
}

/// hsflowd-style ICMP echo sample, unsampled, interfaces 0x3fffffff (the host itself).
#[test]
fn sflow_icmpv4() {
    run_sflow("sflow icmpv4", "data-icmpv4.pcap", 1);
}

/// Raw headers of header protocol 11 (bare IPv4) instead of Ethernet.
#[test]
fn sflow_raw_ipv4_headers() {
    run_sflow("sflow raw ipv4", "data-sflow-raw-ipv4.pcap", 2);
}

/// An expanded flow sample (format 3) with an 802.1Q-tagged frame and a three-AS path.
#[test]
fn sflow_expanded_sample() {
    run_sflow("sflow expanded", "data-sflow-expanded-sample.pcap", 1);
}
