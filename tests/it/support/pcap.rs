//! A small classic-pcap reader (and writer) for the capture tests.
//!
//! Reads little- and big-endian classic pcap files (microsecond or nanosecond
//! timestamps), Ethernet II frames with optional 802.1Q/802.1ad tags (or raw IP),
//! IPv4 and IPv6, and hands back the UDP datagram of each frame. Nothing here panics
//! on short or malformed input: a bad file header is an `Err`, a frame that is not a
//! complete UDP datagram is `None`.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ts_sec: u32,
    /// Microseconds (converted from nanoseconds when the file uses them).
    pub ts_usec: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl Frame {
    /// Capture time in Unix milliseconds.
    pub fn unix_ms(&self) -> i64 {
        i64::from(self.ts_sec) * 1000 + i64::from(self.ts_usec / 1000)
    }
}

/// A parsed capture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcap {
    pub linktype: u32,
    pub frames: Vec<Frame>,
}

/// The UDP datagram carried by one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

fn get<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    get::<2>(b, at).map(u16::from_be_bytes)
}

/// Parse a whole classic pcap file. A truncated last record ends the file (as tshark
/// does, it is reported as an error rather than silently dropped).
pub fn parse(bytes: &[u8]) -> Result<Pcap, String> {
    let magic = get::<4>(bytes, 0).ok_or("file shorter than the pcap magic")?;
    let (big_endian, nanos) = match (u32::from_le_bytes(magic), u32::from_be_bytes(magic)) {
        (MAGIC_US, _) => (false, false),
        (MAGIC_NS, _) => (false, true),
        (_, MAGIC_US) => (true, false),
        (_, MAGIC_NS) => (true, true),
        _ => return Err(format!("not a classic pcap file (magic {magic:02x?})")),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = get::<4>(bytes, at)?;
        Some(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    if bytes.len() < GLOBAL_HEADER_LEN {
        return Err(format!(
            "pcap global header needs {GLOBAL_HEADER_LEN} bytes, file has {}",
            bytes.len()
        ));
    }
    let linktype = u32_at(20).ok_or("short global header")? & 0x0fff_ffff;
    let mut frames = Vec::new();
    let mut at = GLOBAL_HEADER_LEN;
    while at < bytes.len() {
        let header = |off: usize| {
            u32_at(at + off).ok_or_else(|| format!("truncated record header at offset {at}"))
        };
        let ts_sec = header(0)?;
        let ts_frac = header(4)?;
        let incl_len = header(8)?;
        let orig_len = header(12)?;
        let start = at + RECORD_HEADER_LEN;
        let len = usize::try_from(incl_len).map_err(|_| "record length overflow".to_string())?;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                format!("record at offset {at} claims {incl_len} bytes, past the end of the file")
            })?;
        frames.push(Frame {
            ts_sec,
            ts_usec: if nanos { ts_frac / 1000 } else { ts_frac },
            orig_len,
            data: bytes[start..end].to_vec(),
        });
        at = end;
    }
    Ok(Pcap { linktype, frames })
}

/// The UDP datagram in one frame, or `None` when the frame is anything else (or cut
/// short, or an IP fragment).
pub fn udp_datagram(linktype: u32, frame: &[u8]) -> Option<Datagram> {
    match linktype {
        LINKTYPE_ETHERNET => {
            let mut ethertype = be16(frame, 12)?;
            let mut at = 14usize;
            // 802.1Q / 802.1ad tags, possibly stacked.
            for _ in 0..4 {
                if ethertype != 0x8100 && ethertype != 0x88a8 && ethertype != 0x9100 {
                    break;
                }
                ethertype = be16(frame, at + 2)?;
                at += 4;
            }
            let ip = frame.get(at..)?;
            match ethertype {
                0x0800 => ipv4(ip),
                0x86dd => ipv6(ip),
                _ => None,
            }
        }
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => match frame.first()? >> 4 {
            4 => ipv4(frame),
            6 => ipv6(frame),
            _ => None,
        },
        _ => None,
    }
}

fn ipv4(ip: &[u8]) -> Option<Datagram> {
    let first = *ip.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(be16(ip, 2)?);
    let flags_frag = be16(ip, 6)?;
    // More-fragments flag or a fragment offset: not a whole datagram.
    if flags_frag & 0x3fff != 0 {
        return None;
    }
    if ihl < 20 || total < ihl || ip.get(9)? != &17 {
        return None;
    }
    let src = Ipv4Addr::from(get::<4>(ip, 12)?);
    let dst = Ipv4Addr::from(get::<4>(ip, 16)?);
    // The total length trims Ethernet padding.
    let l4 = ip.get(ihl..total)?;
    udp(IpAddr::V4(src), IpAddr::V4(dst), l4)
}

fn ipv6(ip: &[u8]) -> Option<Datagram> {
    if ip.first()? >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(be16(ip, 4)?);
    let mut next = *ip.get(6)?;
    let src = Ipv6Addr::from(get::<16>(ip, 8)?);
    let dst = Ipv6Addr::from(get::<16>(ip, 24)?);
    let mut l4 = ip.get(40..40usize.checked_add(payload_len)?)?;
    // Skip hop-by-hop, routing and destination options headers; give up on fragments.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*l4.get(1)?) + 1) * 8;
                next = *l4.first()?;
                l4 = l4.get(len..)?;
            }
            _ => break,
        }
    }
    if next != 17 {
        return None;
    }
    udp(IpAddr::V6(src), IpAddr::V6(dst), l4)
}

fn udp(src: IpAddr, dst: IpAddr, l4: &[u8]) -> Option<Datagram> {
    let src_port = be16(l4, 0)?;
    let dst_port = be16(l4, 2)?;
    let len = usize::from(be16(l4, 4)?);
    if len < 8 {
        return None;
    }
    let payload = l4.get(8..len)?.to_vec();
    Some(Datagram {
        src,
        dst,
        src_port,
        dst_port,
        payload,
    })
}

/// Every frame's UDP datagram; a frame that does not hold one is an error naming it.
pub fn udp_datagrams(bytes: &[u8]) -> Result<Vec<(Frame, Datagram)>, String> {
    let pcap = parse(bytes)?;
    let linktype = pcap.linktype;
    pcap.frames
        .into_iter()
        .enumerate()
        .map(|(i, frame)| match udp_datagram(linktype, &frame.data) {
            Some(d) => Ok((frame, d)),
            None => Err(format!(
                "frame {} (link type {linktype}) holds no complete UDP datagram",
                i + 1
            )),
        })
        .collect()
}

/// A little-endian, microsecond pcap file holding `frames` in order.
pub fn write(linktype: u32, frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC_US.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&262_144u32.to_le_bytes());
    out.extend_from_slice(&linktype.to_le_bytes());
    for f in frames {
        let len = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&f.ts_sec.to_le_bytes());
        out.extend_from_slice(&f.ts_usec.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&f.orig_len.max(len).to_le_bytes());
        out.extend_from_slice(&f.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(payload: &[u8], pad: usize) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ];
        ip.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2]);
        let udp_len = 8 + payload.len();
        ip.extend_from_slice(&[
            0x30,
            0x39,
            0x08,
            0x07,
            (udp_len >> 8) as u8,
            udp_len as u8,
            0,
            0,
        ]);
        ip.extend_from_slice(payload);
        ip.extend(std::iter::repeat_n(0, pad));
        ip
    }

    fn ether(ethertype: u16, vlan: Option<u16>, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if let Some(id) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn frame(data: Vec<u8>) -> Frame {
        Frame {
            ts_sec: 1_700_000_000,
            ts_usec: 250_000,
            orig_len: data.len() as u32,
            data,
        }
    }

    #[test]
    fn ethernet_vlan_ipv4_round_trip() {
        let plain = ether(0x0800, None, &ipv4_udp(b"hello", 6));
        let tagged = ether(0x0800, Some(42), &ipv4_udp(b"world", 0));
        let file = write(LINKTYPE_ETHERNET, &[frame(plain), frame(tagged)]);
        let got = udp_datagrams(&file).expect("parses");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.payload, b"hello");
        assert_eq!(got[1].1.payload, b"world");
        assert_eq!(got[1].1.src, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!((got[1].1.src_port, got[1].1.dst_port), (12345, 2055));
        assert_eq!(got[0].0.unix_ms(), 1_700_000_000_250);
    }

    #[test]
    fn big_endian_nanosecond_ipv6() {
        let payload = b"v6";
        let mut ip = vec![0x60, 0, 0, 0, 0, 10, 17, 64];
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        ip.extend_from_slice(&[0; 11]);
        ip.push(1);
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        ip.extend_from_slice(&[0; 11]);
        ip.push(2);
        ip.extend_from_slice(&[0, 1, 0, 2, 0, 10, 0, 0]);
        ip.extend_from_slice(payload);
        let data = ether(0x86dd, None, &ip);
        let mut file = Vec::new();
        file.extend_from_slice(&MAGIC_NS.to_be_bytes());
        file.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        file.extend_from_slice(&LINKTYPE_ETHERNET.to_be_bytes());
        for v in [5u32, 7_000_000, data.len() as u32, data.len() as u32] {
            file.extend_from_slice(&v.to_be_bytes());
        }
        file.extend_from_slice(&data);
        let got = udp_datagrams(&file).expect("parses");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.ts_usec, 7_000);
        assert_eq!(got[0].1.payload, payload);
        assert_eq!(got[0].1.src, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(got[0].1.dst_port, 2);
    }

    #[test]
    fn short_and_odd_input_never_panics() {
        let good = write(
            LINKTYPE_ETHERNET,
            &[frame(ether(0x0800, Some(7), &ipv4_udp(b"abc", 0)))],
        );
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
            let _ = udp_datagrams(&good[..cut]);
        }
        let data = &parse(&good).expect("parses").frames[0].data;
        for cut in 0..data.len() {
            assert_eq!(
                udp_datagram(LINKTYPE_ETHERNET, &data[..cut]),
                None,
                "cut {cut}"
            );
        }
        assert!(parse(b"nope").is_err());
        assert!(parse(&[]).is_err());
        // A record claiming more bytes than the file holds.
        let mut bad = good.clone();
        bad[GLOBAL_HEADER_LEN + 8] = 0xff;
        assert!(parse(&bad).is_err());
        // Unknown link type and non-UDP frames.
        assert_eq!(udp_datagram(999, data), None);
        assert_eq!(
            udp_datagram(LINKTYPE_ETHERNET, &ether(0x0806, None, &[0; 28])),
            None
        );
    }
}
