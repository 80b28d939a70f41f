"""Real video streaming: an HTTP server serving the manifest's chunk sizes
as bytes, and a player whose bitrate choices come from the simulation process.

The player follows the packet-level client's playback model
(``emulation/native/video-client.h``) in wall-clock time: the first chunk is
fetched at the start quality and its arrival ends startup; the buffer then
drains one second per second, a stall lasts from the moment it empties to
the next arrival, and above the buffer cap the next request waits a whole
number of 0.5 s steps. Before every later request it sends a ``decide``
event and waits for the ``quality`` command: the ABR (a policy or an agent
over the ns3-gym wire) stays in the simulation process, which a process in
this namespace could not reach over loopback anyway. Each finished chunk is
sent as a ``chunk`` event, so records survive a player that dies. Its
HTTP/1.1 client is a few lines over a non-blocking socket, so a download
stalled by the end of the run still notices the stop at once.
"""

from __future__ import annotations

import math
import re
import selectors
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler

from emulation.real.bulk import set_congestion_control
from emulation.real.endpoint import Channel

CHUNK_PATH = re.compile(r"^/video/(\d+)/(\d+)$")
READ_BYTES = 1 << 16


def video_server(ch: Channel, p: dict) -> None:
    """Serve ``GET /video/<quality>/<chunk>`` on ``address:port`` with ``chunk_bytes[quality][chunk]`` bytes."""
    sizes: list[list[int]] = p["chunk_bytes"]
    body = memoryview(bytes(max(max(level) for level in sizes)))
    served = {"requests": 0, "bytes": 0}

    class ChunkHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # one persistent connection, as a player keeps
        timeout = max(1.0, ch.time_left())

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            match = CHUNK_PATH.match(self.path)
            if not match or int(match[1]) >= len(sizes) or int(match[2]) >= len(sizes[0]):
                self.send_error(404, f"no chunk {self.path}")
                return
            n = sizes[int(match[1])][int(match[2])]
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(body[:n])
            served["requests"] += 1
            served["bytes"] += n

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
            """Quiet: one line per chunk would flood sim.log."""

    # socketserver's TCPServer, not http.server's HTTPServer: no name lookup of the address.
    server = socketserver.TCPServer((p["address"], int(p["port"])), ChunkHandler, bind_and_activate=False)
    set_congestion_control(server.socket, p["cc"])  # accepted connections inherit it
    server.server_bind()
    server.server_activate()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    ch.send("ready")
    while ch.next_command() is not None:
        pass
    ch.send("report", **served)


class ChunkClient:
    """HTTP/1.1 GETs over one persistent connection, each waiting on the socket and on stdin."""

    def __init__(self, ch: Channel, server: str, port: int) -> None:
        self.ch, self.host = ch, server
        self.sock = socket.create_connection((server, port), timeout=max(1.0, ch.time_left()))
        self.sock.setblocking(False)
        self.pending = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.selector.register(0, selectors.EVENT_READ)

    def _receive(self) -> bool:
        """Append what arrives to ``pending``; False once the run stops or the deadline passes."""
        while not self.ch.closed and self.ch.time_left() > 0:
            for key, _ in self.selector.select(min(0.5, self.ch.time_left())):
                if key.fileobj == 0:
                    self.ch.read_available()
                    continue
                try:
                    data = self.sock.recv(READ_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError("the server closed the connection")
                self.pending += data
                return True
        return False

    def get(self, path: str) -> tuple[float, float, int] | None:
        """Fetch ``path``: (first byte time, last byte time, body bytes), or None if the run stopped first."""
        self.sock.setblocking(True)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        self.sock.setblocking(False)
        first_byte_t = None
        while b"\r\n\r\n" not in self.pending:
            if not self._receive():
                return None
            first_byte_t = first_byte_t or time.monotonic()
        head, self.pending = self.pending.split(b"\r\n\r\n", 1)
        status, *header_lines = head.decode("latin-1").split("\r\n")
        if status.split(" ")[1] != "200":
            raise RuntimeError(f"server answered '{status}' for {path}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        length = int(headers["content-length"])
        while len(self.pending) < length:
            body, self.pending = len(self.pending), b""
            length -= body
            if not self._receive():
                return None
        self.pending = self.pending[length:]
        return first_byte_t, time.monotonic(), int(headers["content-length"])

    def close(self) -> None:
        self.selector.close()
        self.sock.close()


def video_player(ch: Channel, p: dict) -> None:
    """After ``go``, play ``n_chunks`` from ``server:port``; the first at ``start_quality``, then as told."""
    bitrates, n_chunks = p["bitrates_bps"], int(p["n_chunks"])
    chunk_s, cap_s, step_s = float(p["chunk_duration_s"]), float(p["buffer_cap_s"]), float(p["wait_step_s"])
    ch.send("ready")
    if ch.wait_go() is None:
        ch.send("report", chunks=0, started=False)
        return
    start = time.monotonic()
    client = ChunkClient(ch, p["server"], int(p["port"]))
    quality, level_s, stamp, playing, done = int(p["start_quality"]), 0.0, start, False, 0

    def buffer_at(t: float) -> float:
        return max(0.0, level_s - (t - stamp)) if playing else 0.0

    for chunk in range(n_chunks):
        wait_s = 0.0
        if chunk > 0:
            excess_s = buffer_at(time.monotonic()) - cap_s
            if excess_s > 0:
                wait_s = math.ceil(excess_s / step_s) * step_s
                ch.next_command(timeout_s=wait_s)  # sleeps, unless the run stops
            if ch.closed:
                break
            ch.send("decide", chunk=chunk, last_quality=quality, buffer_s=buffer_at(time.monotonic()))
            command = ch.next_command()
            if command is None:
                break
            quality = int(command["quality"])
        request_t = time.monotonic()
        buffer_before_s = buffer_at(request_t)
        fetched = client.get(f"/video/{quality}/{chunk}")
        if fetched is None:
            break
        first_byte_t, last_byte_t, received = fetched
        if playing:
            rebuffer_s = max(0.0, (last_byte_t - stamp) - level_s)
            level_s = buffer_at(last_byte_t) + chunk_s
        else:
            rebuffer_s, level_s, playing = last_byte_t - start, chunk_s, True  # startup delay
        stamp = last_byte_t
        ch.send("chunk", chunk=chunk, quality=quality, bitrate_bps=bitrates[quality], chunk_bytes=received,
                request_t=request_t, first_byte_t=first_byte_t, last_byte_t=last_byte_t,
                buffer_before_s=buffer_before_s, buffer_after_s=level_s, rebuffer_s=rebuffer_s, wait_s=wait_s)
        done = chunk + 1
    client.close()
    ch.send("report", chunks=done, started=True)
