"""Bulk traffic between real hosts: a TCP sender and receiver (the kernel's
congestion control and ECN) and a paced UDP sender marking its packets
through the IP TOS byte, with its receiver.

Receivers record how many bytes had arrived when (``RxLog``); the simulation
process turns that into the same per-interval goodput rows simulated sinks
give. Senders are bounded by the ``go`` command's duration and by
``max_bytes``; the TCP sender reports the kernel's own view of the
connection (``TCP_INFO``).
"""

from __future__ import annotations

import fcntl
import selectors
import socket
import struct
import termios
import time

from emulation.real.endpoint import Channel

#: Receive timestamps closer than this are merged (bounds the report at 1000 samples/s).
RX_SAMPLE_S = 0.001
#: TCP_INFO option bit: ECN was negotiated on the connection (linux/tcp.h TCPI_OPT_ECN).
TCPI_OPT_ECN = 8
#: Bytes of sequence number leading every UDP payload.
UDP_HEADER = struct.Struct("!Q")
ECN_NAMES = ("not_ect", "ect1", "ect0", "ce")  # indexed by the TOS byte's two ECN bits


class RxLog:
    """Cumulative bytes received over monotonic time, at most one sample per ``RX_SAMPLE_S``."""

    def __init__(self) -> None:
        self.total = 0
        self.samples: list[tuple[float, int]] = []

    def add(self, n: int) -> None:
        self.total += n
        now = time.monotonic()
        if self.samples and now - self.samples[-1][0] < RX_SAMPLE_S:
            self.samples[-1] = (self.samples[-1][0], self.total)
        else:
            self.samples.append((now, self.total))


def tcp_info(sock: socket.socket) -> dict:
    """The kernel's counters of a TCP connection (linux/tcp.h struct tcp_info)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    options = raw[5]
    u32 = struct.unpack_from("24I", raw, 8)
    return {
        "ecn_negotiated": bool(options & TCPI_OPT_ECN),
        "srtt_ms": u32[15] / 1e3,
        "snd_cwnd_pkts": u32[18],
        "total_retrans": u32[23],
    }


def set_congestion_control(sock: socket.socket, cc: str) -> None:
    """Per socket: a namespace may only default to the algorithms the host allows, a privileged socket to any."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    except OSError as exc:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            available = f.read().strip()
        raise RuntimeError(f"the kernel refuses congestion control '{cc}' ({exc.strerror}); available: {available}") from exc


def _wait_acked(ch: Channel, sock: socket.socket) -> None:
    """Wait until the peer acknowledged everything sent (or the run stops), so TCP_INFO covers the whole transfer."""
    while not ch.closed and ch.time_left() > 0:
        unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if unacked == 0:
            return
        ch.next_command(timeout_s=0.01)


def tcp_receiver(ch: Channel, p: dict) -> None:
    """Accept one connection on ``address:port`` and count what arrives until it ends or the run stops."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((p["address"], int(p["port"])))
    listener.listen(1)
    listener.setblocking(False)
    ch.send("ready")
    log, buf, conn, ended = RxLog(), bytearray(1 << 18), None, False
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        sel.register(0, selectors.EVENT_READ)
        while not (ch.closed or ended) and ch.time_left() > 0:
            for key, _ in sel.select(min(0.5, ch.time_left())):
                if key.fileobj == 0:
                    ch.read_available()
                elif key.fileobj is listener:
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    sel.unregister(listener)
                    sel.register(conn, selectors.EVENT_READ)
                else:
                    try:
                        n = conn.recv_into(buf)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:  # a sender whose time is up resets the connection
                        n = 0
                    if n == 0:
                        ended = True
                    else:
                        log.add(n)
    ch.send("report", rx_bytes=log.total, samples=log.samples, connected=conn is not None)
    for s in (conn, listener):
        if s is not None:
            s.close()


def tcp_sender(ch: Channel, p: dict) -> None:
    """After ``go``, send to ``remote:port`` with congestion control ``cc`` for ``duration_s`` or ``max_bytes``."""
    ch.send("ready")
    go = ch.wait_go()
    if go is None:
        ch.send("report", tx_bytes=0, started=False)
        return
    end = time.monotonic() + float(go["duration_s"])
    max_bytes = int(p["max_bytes"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    set_congestion_control(sock, p["cc"])
    sock.settimeout(max(0.1, min(10.0, end - time.monotonic())))
    sock.connect((p["remote"], int(p["port"])))
    sock.setblocking(False)
    payload, sent = memoryview(bytes(1 << 18)), 0
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        sel.register(0, selectors.EVENT_READ)
        while sent < max_bytes and not ch.closed and (left := end - time.monotonic()) > 0:
            for key, _ in sel.select(min(left, 0.5)):
                if key.fileobj == 0:
                    ch.read_available()
                else:
                    try:
                        sent += sock.send(payload[: min(len(payload), max_bytes - sent)])
                    except BlockingIOError:
                        pass
    if sent >= max_bytes:
        _wait_acked(ch, sock)
    info = tcp_info(sock)
    if sent < max_bytes:
        # The flow's time is up: reset rather than let the kernel keep draining the send buffer.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    ch.send("report", tx_bytes=sent, started=True, **info)


def udp_sender(ch: Channel, p: dict) -> None:
    """After ``go``, send ``packet_bytes`` datagrams to ``remote:port`` at ``rate_bps`` with IP TOS ``tos``."""
    size, tos = int(p["packet_bytes"]), int(p["tos"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    sock.connect((p["remote"], int(p["port"])))
    sock.setblocking(False)
    ch.send("ready")
    go = ch.wait_go()
    if go is None:
        ch.send("report", tx_bytes=0, tx_packets=0, started=False)
        return
    start = time.monotonic()
    end = start + float(go["duration_s"])
    gap_s = size * 8 / float(p["rate_bps"])
    max_packets = int(p["max_bytes"]) // size
    payload, seq, refused = bytearray(size), 0, 0
    with selectors.DefaultSelector() as sel:
        sel.register(0, selectors.EVENT_READ)
        while seq < max_packets and not ch.closed and (now := time.monotonic()) < end:
            due = min(int((now - start) / gap_s) + 1, max_packets)
            while seq < due:
                UDP_HEADER.pack_into(payload, 0, seq)
                try:
                    sock.send(payload)
                except (BlockingIOError, OSError):  # the TAP's queue is full: the packet is lost at the sender
                    refused += 1
                seq += 1
            wait = min(start + seq * gap_s, end) - time.monotonic()
            if wait > 0 and sel.select(wait):
                ch.read_available()
    sock.close()
    ch.send("report", tx_bytes=(seq - refused) * size, tx_packets=seq - refused, refused_packets=refused,
            started=True, tos=tos)


def udp_receiver(ch: Channel, p: dict) -> None:
    """Count datagrams on ``address:port``: bytes over time, ECN codepoint of each (IP_RECVTOS), sequence gaps."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind((p["address"], int(p["port"])))
    sock.setblocking(False)
    ch.send("ready")
    log, ecn, packets, highest = RxLog(), [0, 0, 0, 0], 0, -1
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        sel.register(0, selectors.EVENT_READ)
        while not ch.closed and ch.time_left() > 0:
            for key, _ in sel.select(min(0.5, ch.time_left())):
                if key.fileobj == 0:
                    ch.read_available()
                    continue
                while True:
                    try:
                        data, ancillary, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(4))
                    except BlockingIOError:
                        break
                    packets += 1
                    log.add(len(data))
                    for level, kind, value in ancillary:
                        if level == socket.IPPROTO_IP and kind == socket.IP_TOS and value:
                            ecn[value[0] & 3] += 1
                    if len(data) >= UDP_HEADER.size:
                        highest = max(highest, UDP_HEADER.unpack_from(data)[0])
    sock.close()
    ch.send("report", rx_bytes=log.total, samples=log.samples, rx_packets=packets,
            lost_packets=max(0, highest + 1 - packets), **dict(zip(ECN_NAMES, ecn, strict=True)))
