"""A ZeroMQ REQ socket in plain Python: ZMTP 3.1 with NULL security over TCP or a Unix socket.

Why not pyzmq here: libzmq moves every message through a background I/O
thread, so each control tick costs the simulation two thread hand-offs (its
send wakes the I/O thread, whose receipt of the answer wakes the simulation)
on top of the agent's own. This socket reads and writes the connection from
the calling thread, so a tick is one ``send`` and one blocking ``recv``.

The bytes are libzmq's: the 64-byte greeting (signature, version 3.1,
mechanism NULL), a READY command with ``Socket-Type: REQ`` and an empty
``Identity``, then each request as an empty delimiter frame and the message
frame; a reply comes back behind its own delimiter. Any REP peer (pyzmq,
libzmq, ns3-gym's agents) sees the ZeroMQ REQ socket it expects, over
``tcp://HOST:PORT`` or ``ipc://PATH`` (libzmq's ipc transport is the same
protocol over a Unix stream socket). The spec is ZeroMQ RFC 23 (ZMTP 3.0)
with RFC 37's PING/PONG answered, should a peer turn on heartbeats.
"""

from __future__ import annotations

import socket
import struct
import time


def greeting(identity: bytes = b"") -> bytes:
    """Greeting of a client speaking ZMTP 3.1 with the NULL mechanism, as libzmq sends it: its ZMTP 1.0
    compatible signature carries the routing id's length plus one."""
    return (b"\xff" + struct.pack(">Q", len(identity) + 1) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


GREETING = greeting()
_GREETING_SIZE = 64
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
#: How often an unanswered connection attempt is retried (the agent may not be listening yet).
CONNECT_RETRY_S = 0.02


class ZmtpError(ConnectionError):
    """The peer broke the protocol or the connection."""


class ZmtpTimeout(ZmtpError, TimeoutError):
    """Nothing (or not all of a message) arrived in time."""


class ZmtpClosed(ZmtpError):
    """The peer closed the connection (it exited, or closed its socket)."""


def _command(name: bytes, body: bytes = b"") -> bytes:
    payload = bytes([len(name)]) + name + body
    return bytes([_COMMAND, len(payload)]) + payload if len(payload) < 256 else (
        bytes([_COMMAND | _LONG]) + struct.pack(">Q", len(payload)) + payload)


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def ready_req(identity: bytes = b"") -> bytes:
    """The READY command of a REQ socket (libzmq's properties, in libzmq's order); ``identity`` is the
    routing id a ROUTER peer (a policy server) files this connection under."""
    if len(identity) > 255 or identity[:1] == b"\0":
        raise ValueError("a ZeroMQ routing id has at most 255 bytes and does not start with a zero byte")
    return _command(b"READY", _property(b"Socket-Type", b"REQ") + _property(b"Identity", identity))


#: A request's envelope: the empty delimiter frame, with MORE set.
_DELIMITER = b"\x01\x00"


def parse_endpoint(endpoint: str) -> tuple[int, str | tuple[str, int]]:
    """``tcp://HOST:PORT`` (IPv6 hosts in brackets) or ``ipc://PATH`` as a socket family and address;
    ``ipc://@NAME`` is Linux's abstract namespace, as in libzmq."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        path = endpoint.removeprefix("ipc://")
        return socket.AF_UNIX, "\0" + path[1:] if path.startswith("@") else path
    host, sep, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not endpoint.startswith("tcp://") or not sep or not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
    return socket.AF_INET, (host.removeprefix("[").removesuffix("]"), int(port))


class ReqSocket:
    """One REQ connection to one REP peer: strictly alternating ``send`` and ``recv``, each with a time limit."""

    def __init__(self, endpoint: str, identity: bytes = b""):
        self.endpoint = endpoint
        self._hello = greeting(identity) + ready_req(identity)
        self._family, self._address = parse_endpoint(endpoint)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._timeout_s: float | None = None

    def connect(self, timeout_s: float) -> None:
        """Connect (retrying while nobody listens yet) and exchange greetings and READY within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._sock = self._open(max(deadline - time.monotonic(), 1e-3))
                break
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                if time.monotonic() >= deadline:
                    raise ZmtpTimeout(f"nobody listens at {self.endpoint} ({exc.strerror})") from exc
                time.sleep(CONNECT_RETRY_S)
            except TimeoutError as exc:
                raise ZmtpTimeout(f"connecting to {self.endpoint} timed out") from exc
            except OSError as exc:
                raise ZmtpError(f"cannot connect to {self.endpoint}: {exc.strerror or exc}") from exc
        self._sendall(self._hello, deadline - time.monotonic())
        greeting = self._read(_GREETING_SIZE, deadline)
        if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3:
            raise ZmtpError(f"the peer at {self.endpoint} is not a ZMTP 3 peer (greeting {greeting[:12].hex()})")
        if greeting[12:32].rstrip(b"\x00") != b"NULL":
            raise ZmtpError(f"the peer at {self.endpoint} wants security mechanism "
                            f"{greeting[12:32].rstrip(bytes(1)).decode(errors='replace')}, only NULL is spoken here")
        flags, body = self._next(deadline)
        if not flags & _COMMAND or body[1:1 + body[0]] != b"READY":
            raise ZmtpError(f"the peer at {self.endpoint} did not answer with READY")

    def _open(self, timeout_s: float) -> socket.socket:
        if self._family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            try:
                sock.connect(self._address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self._address, timeout=timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking, with the kernel's time limits: one system call per send or receive (Python's own
        # timeouts poll first, a second one), and a receive that times out fails with EAGAIN.
        sock.settimeout(None)
        self._timeout_s = None
        return sock

    def send(self, data: bytes, timeout_s: float) -> None:
        """Send one single-part message behind its delimiter."""
        size = len(data)
        header = bytes([0, size]) if size < 256 else bytes([_LONG]) + struct.pack(">Q", size)
        self._sendall(_DELIMITER + header + data, timeout_s)

    def recv(self, timeout_s: float) -> bytes:
        """The next reply's message (its first part, as a REQ socket hands it out)."""
        deadline = time.monotonic() + timeout_s
        flags, body = self._frame(deadline)
        if body or not flags & _MORE:
            raise ZmtpError(f"reply from {self.endpoint} without its empty delimiter frame")
        flags, message = self._frame(deadline)
        while flags & _MORE:  # further parts of the same message: a REQ hands out the first
            flags, _ = self._frame(deadline)
        return message

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    # ------------------------------------------------------------------ framing

    def _next(self, deadline: float) -> tuple[int, bytes]:
        """The next frame or command: its flags and body."""
        flags = self._read(1, deadline)[0]
        if flags & ~(_MORE | _LONG | _COMMAND):
            raise ZmtpError(f"malformed frame from {self.endpoint} (flags {flags:#04x})")
        size = struct.unpack(">Q", self._read(8, deadline))[0] if flags & _LONG else self._read(1, deadline)[0]
        return flags, self._read(size, deadline)

    def _frame(self, deadline: float) -> tuple[int, bytes]:
        """The next message frame (flags, body); commands in between are answered (PING) or skipped."""
        while True:
            flags, body = self._next(deadline)
            if not flags & _COMMAND:
                return flags, body
            name = body[1:1 + body[0]]
            if name == b"PING":  # RFC 37: answer with the ping's context
                self._sendall(_command(b"PONG", body[1 + body[0] + 2:]), deadline - time.monotonic())
            elif name == b"ERROR":
                reason = body[2 + body[0]:].decode(errors="replace")
                raise ZmtpError(f"the peer at {self.endpoint} reported an error: {reason}")
            elif name != b"PONG":
                raise ZmtpError(f"unexpected command {name!r} from {self.endpoint}")

    def _read(self, size: int, deadline: float) -> bytes:
        buf = self._buf
        while len(buf) < size:
            sock = self._require()
            self._set_timeout(deadline - time.monotonic())
            try:
                chunk = sock.recv(65536)
            except BlockingIOError as exc:
                raise ZmtpTimeout(f"no message from {self.endpoint} in time") from exc
            except ConnectionResetError as exc:
                raise ZmtpClosed(f"the peer at {self.endpoint} reset the connection") from exc
            except OSError as exc:
                raise ZmtpError(f"connection to {self.endpoint} failed: {exc.strerror or exc}") from exc
            if not chunk:
                raise ZmtpClosed(f"the peer at {self.endpoint} closed the connection")
            buf += chunk
        data = bytes(buf[:size])
        del buf[:size]
        return data

    def _sendall(self, data: bytes, timeout_s: float) -> None:
        sock = self._require()
        self._set_timeout(timeout_s)
        try:
            sock.sendall(data)
        except BlockingIOError as exc:
            raise ZmtpTimeout(f"sending to {self.endpoint} timed out") from exc
        except OSError as exc:
            raise ZmtpError(f"connection to {self.endpoint} failed: {exc.strerror or exc}") from exc

    def _set_timeout(self, timeout_s: float) -> None:
        """Limit each blocking send and receive to ``timeout_s`` (only when the limit changes by more than
        5 %: setting it is a system call, and a wait of many receives may overrun its deadline that much)."""
        if timeout_s <= 0:
            raise ZmtpTimeout(f"no message from {self.endpoint} in time")
        if self._timeout_s is None or abs(timeout_s - self._timeout_s) > 0.05 * self._timeout_s:
            micros = max(1, round(timeout_s * 1e6))  # a struct timeval; all zero would mean no limit
            limit = struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            self._timeout_s = timeout_s

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise ZmtpError(f"not connected to {self.endpoint}")
        return self._sock
