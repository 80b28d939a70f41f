"""A process on a real host: ``python -m emulation.real.endpoint ROLE --netns-fd N --parent-pid P --params JSON``.

It enters the host's namespace, ties its life to the simulation process that
started it, and runs one role (``ROLES``). It talks to the simulation
process over its standard streams, one JSON object per line: it sends
events (``ready``, ``decide``, ``chunk``, ``report``, ``error``) on stdout
and reads commands (``go``, ``quality``, ``stop``) from stdin. End of stdin
means stop. Every role is bounded in bytes by its parameters and in time by
``deadline_s`` (seconds after the process starts), and stops by itself.
Stdlib only, so a host process starts in tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import sys
import time
from collections.abc import Callable

from emulation.real.netns import die_with_parent, setns


class Channel:
    """The line protocol with the simulation process, on stdin/stdout."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline = time.monotonic() + deadline_s
        self.closed = False  # stdin reached its end or a stop arrived
        self._pending: list[dict] = []
        self._buffer = b""
        os.set_blocking(0, False)

    def send(self, event: str, **fields) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def read_available(self) -> None:
        """Take in whatever stdin holds now (call when it is readable)."""
        while not self.closed:
            try:
                data = os.read(0, 65536)
            except BlockingIOError:
                return
            if not data:
                self.closed = True
                return
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    command = json.loads(line)
                    if command.get("cmd") == "stop":
                        self.closed = True
                    else:
                        self._pending.append(command)

    def next_command(self, timeout_s: float | None = None) -> dict | None:
        """The next command, waiting up to ``timeout_s`` (None: until the deadline); None when stopped or timed out."""
        limit = self.deadline if timeout_s is None else min(self.deadline, time.monotonic() + timeout_s)
        with selectors.DefaultSelector() as sel:
            sel.register(0, selectors.EVENT_READ)
            while not self._pending and not self.closed:
                wait = limit - time.monotonic()
                if wait <= 0:
                    return None
                if sel.select(wait):
                    self.read_available()
        return self._pending.pop(0) if self._pending else None

    def wait_go(self) -> dict | None:
        """Block until the ``go`` command; None if the run stops first."""
        while (command := self.next_command()) is not None:
            if command.get("cmd") == "go":
                return command
        return None


def yield_to_simulator() -> None:
    """Run one real-time priority below the simulator (whose policy a host inherits), so the
    simulator's thread preempts a host process on its core instead of waiting for it."""
    if os.sched_getscheduler(0) == os.SCHED_FIFO:
        priority = os.sched_getparam(0).sched_priority
        if priority > 1:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority - 1))


def _roles() -> dict[str, Callable[[Channel, dict], None]]:
    from emulation.real import bulk, video

    return {
        "tcp-sender": bulk.tcp_sender,
        "tcp-receiver": bulk.tcp_receiver,
        "udp-sender": bulk.udp_sender,
        "udp-receiver": bulk.udp_receiver,
        "video-server": video.video_server,
        "video-player": video.video_player,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulation.real.endpoint", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(_roles()))
    parser.add_argument("--netns-fd", type=int, required=True, help="descriptor of the host's network namespace")
    parser.add_argument("--parent-pid", type=int, required=True, help="the simulation process (we die with it)")
    parser.add_argument("--params", required=True, help="the role's parameters as a JSON object")
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    yield_to_simulator()
    setns(args.netns_fd)
    os.close(args.netns_fd)
    params = json.loads(args.params)
    channel = Channel(float(params["deadline_s"]))
    try:
        _roles()[args.role](channel, params)
    except Exception as exc:  # reported to the simulation process, which fails the run with it
        channel.send("error", error=f"{args.role} on {params.get('host', '?')}: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
