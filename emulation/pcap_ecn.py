"""Count ECN codepoints per flow in a pcap: the wire-level proof that L4S
senders mark ECT(1), classic ones ECT(0)/Not-ECT, and the AQM sets CE; and
count TCP retransmissions.

Reads with scapy's raw pcap reader and decodes only the IPv4 and TCP/UDP
headers with struct (full scapy dissection costs ~50 us per packet; this
~1 us), handling ns-3's point-to-point (PPP) and Ethernet link types (the
bottleneck's capture and real hosts' TAPs). Captures may be cut to the
headers (a small snap length): only header fields are read.

``python -m emulation.pcap_ecn FILE.pcap`` prints ``flow_stats``.
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
from scapy.utils import RawPcapReader

ECN_NAMES = ("not_ect", "ect1", "ect0", "ce")  # indexed by the 2 ECN bits: 00, 01, 10, 11
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9


def _ipv4_offset(linktype: int, frame: bytes) -> int | None:
    if linktype == LINKTYPE_PPP:
        return 2 if frame[:2] == b"\x00\x21" else None
    if linktype == LINKTYPE_ETHERNET:
        return 14 if frame[12:14] == b"\x08\x00" else None
    raise ValueError(f"unsupported pcap link type {linktype} (expected PPP or Ethernet)")


def _headers(path: Path):
    """``(frame, ip offset, ip header length, proto, sport, dport)`` of every IPv4 packet."""
    if not path.is_file():
        raise FileNotFoundError(f"pcap not found: {path}")
    with RawPcapReader(str(path)) as reader:
        linktype = reader.linktype
        for frame, _meta in reader:
            off = _ipv4_offset(linktype, frame)
            if off is None or len(frame) < off + 20 or frame[off] >> 4 != 4:
                continue
            ihl = (frame[off] & 0xF) * 4
            proto = frame[off + 9]
            sport = dport = 0
            if proto in (6, 17) and len(frame) >= off + ihl + 4:
                sport, dport = struct.unpack_from("!HH", frame, off + ihl)
            yield frame, off, ihl, proto, sport, dport


def _dotted(address: bytes) -> str:
    return ".".join(map(str, address))


def count_ecn(path: str | Path) -> pd.DataFrame:
    """One row per (src, dst, proto, sport, dport) with packet counts per ECN codepoint."""
    counts: Counter = Counter()
    for frame, off, _ihl, proto, sport, dport in _headers(Path(path)):
        counts[(frame[off + 12 : off + 16], frame[off + 16 : off + 20], proto, sport, dport, frame[off + 1] & 0x3)] += 1
    rows: dict[tuple, dict] = {}
    for (src, dst, proto, sport, dport, ecn), n in counts.items():
        key = (_dotted(src), _dotted(dst), proto, sport, dport)
        row = rows.setdefault(key, dict(zip(("src", "dst", "proto", "sport", "dport"), key, strict=True)) | dict.fromkeys(ECN_NAMES, 0))
        row[ECN_NAMES[ecn]] += n
    table = pd.DataFrame(list(rows.values()), columns=["src", "dst", "proto", "sport", "dport", *ECN_NAMES])
    return table.sort_values(["dport", "src"]).reset_index(drop=True)


#: flow_stats columns after the 5-tuple.
FLOW_STAT_COLUMNS = ["packets", "data_packets", *ECN_NAMES, "retransmissions"]


def flow_stats(path: str | Path) -> pd.DataFrame:
    """One row per (src, dst, proto, sport, dport) direction: packets, data packets (TCP segments
    with payload, every UDP datagram), the ECN codepoints of the data packets, and TCP
    retransmissions (data segments starting below the highest sequence already sent).
    """
    rows: dict[tuple, dict] = {}
    highest: dict[tuple, int] = {}  # unwrapped end of the highest TCP sequence seen per direction
    for frame, off, ihl, proto, sport, dport in _headers(Path(path)):
        key = (frame[off + 12 : off + 16], frame[off + 16 : off + 20], proto, sport, dport)
        row = rows.get(key)
        if row is None:
            row = rows[key] = dict.fromkeys(FLOW_STAT_COLUMNS, 0)
        row["packets"] += 1
        total_len = struct.unpack_from("!H", frame, off + 2)[0]
        if proto == 6:
            if len(frame) < off + ihl + 13:
                continue
            data_off = (frame[off + ihl + 12] >> 4) * 4
            payload = total_len - ihl - data_off
            if payload <= 0:
                continue
            seq = struct.unpack_from("!I", frame, off + ihl + 4)[0]
            top = highest.get(key)
            if top is None:
                start = seq
            else:  # unwrap the 32-bit sequence number next to the highest seen
                start = top + ((seq - top + (1 << 31)) % (1 << 32)) - (1 << 31)
                if start < top:
                    row["retransmissions"] += 1
            highest[key] = max(top if top is not None else start, start + payload)
        elif proto != 17:
            continue
        row["data_packets"] += 1
        row[ECN_NAMES[frame[off + 1] & 0x3]] += 1
    table = pd.DataFrame(
        [{"src": _dotted(k[0]), "dst": _dotted(k[1]), "proto": k[2], "sport": k[3],
          "dport": k[4], **v} for k, v in rows.items()],
        columns=["src", "dst", "proto", "sport", "dport", *FLOW_STAT_COLUMNS],
    )
    return table.sort_values(["dport", "src"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m emulation.pcap_ecn FILE.pcap", file=sys.stderr)
        return 2
    print(flow_stats(args[0]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
