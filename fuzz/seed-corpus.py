#!/usr/bin/env python3
"""Seed inputs for the decoder fuzz targets, from the real exporter captures.

    python3 fuzz/seed-corpus.py [CAPTURES_DIR] [OUT_DIR]

Defaults: ../shared/testdata/captures next to the crate, and /tmp/flowstage-fuzz-seeds.
Writes OUT_DIR/{v5,v9,ipfix,sflow}/: the UDP payload of every frame, plus for template/data
pairs one "session" input (data, templates, data again, joined by the SPLT separator
the targets cut at). The captures stay outside the repository (their README says not to
copy them in), so keep OUT_DIR outside it too and pass it as a second corpus directory.
"""

import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAPTURES = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared/testdata/captures"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/flowstage-fuzz-seeds")
SEPARATOR = b"SPLT"
VERSIONS = {5: "v5", 9: "v9", 10: "ipfix"}
SESSIONS = [
    ("v9", "template", "data"),
    ("v9", "options-template", "options-data"),
    ("v9", "samplingrate-template", "samplingrate-data"),
    ("v9", "icmp-template", "icmp-data"),
    ("ipfix", "ipfixprobe-templates", "ipfixprobe-data"),
]


def udp_payloads(path):
    """UDP payloads of a classic pcap (Ethernet with optional VLAN tags, or raw IP)."""
    b = path.read_bytes()
    magic = struct.unpack("<I", b[:4])[0]
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    link = struct.unpack(e + "I", b[20:24])[0]
    at = 24
    while at + 16 <= len(b):
        incl = struct.unpack(e + "I", b[at + 8 : at + 12])[0]
        f = b[at + 16 : at + 16 + incl]
        at += 16 + incl
        o = 0
        if link == 1:
            et, o = struct.unpack(">H", f[12:14])[0], 14
            while et in (0x8100, 0x88A8):
                et, o = struct.unpack(">H", f[o + 2 : o + 4])[0], o + 4
        else:
            et = 0x0800 if f[0] >> 4 == 4 else 0x86DD
        if et == 0x0800:
            proto, o = f[o + 9], o + (f[o] & 15) * 4
        elif et == 0x86DD:
            proto, o = f[o + 6], o + 40
        else:
            continue
        if proto == 17:
            ulen = struct.unpack(">H", f[o + 4 : o + 6])[0]
            yield f[o + 8 : o + ulen]


def main():
    datagrams = {}
    for pcap in sorted(CAPTURES.glob("*.pcap")):
        for i, d in enumerate(udp_payloads(pcap)):
            proto = VERSIONS.get(struct.unpack(">H", d[:2])[0]) if len(d) >= 2 else None
            if proto is None and len(d) >= 4 and struct.unpack(">I", d[:4])[0] == 5:
                proto = "sflow"
            if proto is None:
                continue
            (OUT / proto).mkdir(parents=True, exist_ok=True)
            (OUT / proto / f"{pcap.stem}-{i}").write_bytes(d)
            datagrams.setdefault((proto, pcap.stem), []).append(d)
    for proto, templates, data in SESSIONS:
        t, d = datagrams.get((proto, templates), []), datagrams.get((proto, data), [])
        if t and d:
            (OUT / proto / f"session-{templates}").write_bytes(SEPARATOR.join(d[:1] + t + d))
    for proto in list(VERSIONS.values()) + ["sflow"]:
        n = len(os.listdir(OUT / proto)) if (OUT / proto).is_dir() else 0
        print(f"{OUT / proto}: {n} inputs")


if __name__ == "__main__":
    main()
