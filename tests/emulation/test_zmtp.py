"""The simulation's own ZeroMQ REQ socket (emulation.zmtp) against libzmq (pyzmq) and raw peers: the same
bytes on the wire as a libzmq REQ, replies from a real REP over tcp:// and ipc://, and clear failures."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

from emulation.zmtp import GREETING, ReqSocket, ZmtpClosed, ZmtpError, ZmtpTimeout, greeting

#: What a libzmq REP sends when a peer connects: its greeting and READY (Socket-Type REP).
REP_HELLO = GREETING + b"\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x03REP"


def _listen() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server, server.getsockname()[1]


def _captured_bytes(send_with) -> bytes:
    """Everything a REQ client sends to a raw peer that greets it as a REP: handshake and one request."""
    server, port = _listen()
    captured = bytearray()

    def peer() -> None:
        conn, _ = server.accept()
        conn.settimeout(0.5)
        conn.sendall(REP_HELLO)
        try:
            while chunk := conn.recv(4096):
                captured.extend(chunk)
        except TimeoutError:
            pass
        conn.close()

    thread = threading.Thread(target=peer)
    thread.start()
    send_with(f"tcp://127.0.0.1:{port}")
    thread.join(timeout=10)
    server.close()
    return bytes(captured)


@pytest.mark.parametrize("identity", [b"", b"aqm@/runs/x"])
def test_the_bytes_on_the_wire_are_a_libzmq_req_sockets(identity):
    request = b"an EnvStateMsg " * 30  # over 255 bytes: a long frame

    def with_pyzmq(endpoint: str) -> None:
        sock = zmq.Context.instance().socket(zmq.REQ)
        if identity:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(endpoint)
        sock.send(request)
        time.sleep(0.3)
        sock.close(linger=0)

    def with_ours(endpoint: str) -> None:
        sock = ReqSocket(endpoint, identity)
        sock.connect(5.0)
        sock.send(request, 5.0)
        time.sleep(0.3)
        sock.close()

    theirs, ours = _captured_bytes(with_pyzmq), _captured_bytes(with_ours)
    assert theirs.startswith(greeting(identity)) and theirs.endswith(request)
    assert ours == theirs


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_exchanges_with_a_pyzmq_rep_socket(tmp_path, transport):
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    if transport == "tcp":
        endpoint = f"tcp://127.0.0.1:{rep.bind_to_random_port('tcp://127.0.0.1')}"
    else:
        endpoint = f"ipc://{tmp_path / 'agent.sock'}"
        rep.bind(endpoint)
    messages = [b"", b"x", bytes(range(256)) * 3]

    def agent() -> None:
        for _ in messages:
            rep.send(rep.recv()[::-1])

    thread = threading.Thread(target=agent)
    thread.start()
    req = ReqSocket(endpoint)
    try:
        req.connect(5.0)
        for message in messages:
            req.send(message, 5.0)
            assert req.recv(5.0) == message[::-1]
    finally:
        thread.join(timeout=10)
        req.close()
        rep.close()
        context.term()


def test_a_ping_is_answered_and_the_reply_still_arrives():
    server, port = _listen()
    pong = []

    def peer() -> None:
        conn, _ = server.accept()
        conn.settimeout(5)
        conn.sendall(REP_HELLO)
        received = b""
        while not received.endswith(b"request"):  # greeting, READY, then the request
            received += conn.recv(4096)
        conn.sendall(b"\x04\x0c\x04PING\x00\x0actx42")  # PING, TTL 1 s, context "ctx42"
        conn.sendall(b"\x01\x00\x00\x05reply")
        pong.append(conn.recv(4096))
        conn.close()

    thread = threading.Thread(target=peer)
    thread.start()
    req = ReqSocket(f"tcp://127.0.0.1:{port}")
    req.connect(5.0)
    req.send(b"request", 5.0)
    assert req.recv(5.0) == b"reply"
    thread.join(timeout=10)
    req.close()
    server.close()
    assert pong == [b"\x04\x0a\x04PONGctx42"]


def test_silence_closing_and_absence_fail_clearly():
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    req = ReqSocket(f"tcp://127.0.0.1:{port}")
    req.connect(5.0)
    req.send(b"anyone?", 5.0)
    start = time.monotonic()
    with pytest.raises(ZmtpTimeout, match=f"tcp://127.0.0.1:{port}"):
        req.recv(0.3)
    assert 0.25 < time.monotonic() - start < 2.0
    rep.close()
    context.term()
    with pytest.raises(ZmtpClosed, match="closed the connection|reset the connection"):
        req.recv(5.0)
    req.close()
    nobody = ReqSocket(f"tcp://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(ZmtpTimeout, match="nobody listens"):
        nobody.connect(0.3)  # retried while nobody listens, then given up
    assert time.monotonic() - start < 2.0
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT or ipc://PATH"):
        ReqSocket("udp://127.0.0.1:5")
    with pytest.raises(ZmtpError, match="not connected"):
        ReqSocket("tcp://127.0.0.1:5").send(b"x", 1.0)
