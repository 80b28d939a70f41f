"""pcap_ecn.flow_stats on packets written with scapy: ECN codepoints of data
packets, TCP retransmissions across a sequence-number wrap, headers-only captures."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from emulation.pcap_ecn import flow_stats


def _tcp(seq: int, payload: int, tos: int = 0x02, flags: str = "A") -> Ether:
    return Ether() / IP(src="10.3.0.2", dst="10.4.0.2", tos=tos) / TCP(sport=40000, dport=5000, seq=seq,
                                                                       flags=flags) / (b"x" * payload)


def test_flow_stats_counts_codepoints_of_data_packets_and_retransmissions(tmp_path):
    start = 2**32 - 3000  # the sequence number wraps inside the flow
    packets = [
        _tcp(start - 1, 0, tos=0x00, flags="S"),             # SYN: not a data packet
        _tcp(start, 1448),
        _tcp(start + 1448, 1448),
        _tcp((start + 2896) % 2**32, 1448),                  # wraps
        _tcp(start + 1448, 1448, tos=0x00),                  # retransmission (Not-ECT, RFC 3168)
        _tcp((start + 4344) % 2**32, 1448, tos=0x03),        # CE-marked new data after the wrap
        _tcp((start + 5792) % 2**32, 0),                     # pure ACK-like segment: not data
        Ether() / IP(src="10.4.0.2", dst="10.3.0.2") / TCP(sport=5000, dport=40000, flags="A"),
        *[Ether() / IP(src="10.3.1.2", dst="10.4.1.2", tos=0x01) / UDP(sport=1, dport=5001) / (b"u" * 1200)] * 3,
    ]
    path = tmp_path / "tap.pcap"
    wrpcap(str(path), packets, snaplen=128)  # headers only, as real hosts' TAPs are captured
    table = flow_stats(path).set_index(["src", "dport"])
    tcp = table.loc[("10.3.0.2", 5000)]
    assert (tcp["packets"], tcp["data_packets"], tcp["retransmissions"]) == (7, 5, 1)
    assert (tcp["ect0"], tcp["not_ect"], tcp["ce"], tcp["ect1"]) == (3, 1, 1, 0)
    ack = table.loc[("10.4.0.2", 40000)]
    assert (ack["packets"], ack["data_packets"]) == (1, 0)
    udp = table.loc[("10.3.1.2", 5001)]
    assert (udp["data_packets"], udp["ect1"], udp["retransmissions"]) == (3, 3, 0)
