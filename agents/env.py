"""The agent side of the ns3-gym bridge as a gymnasium Env.

The agent binds a REP socket; a simulation (ours, or any ns3-gym one) connects,
announces its spaces, and then sends one state per control tick. One episode is
one connection: ``reset()`` waits for a simulation, ``step()`` answers the
pending state and returns the next one. Every wait is bounded (``timeout_s``),
and a simulation started with :meth:`OpenGymEnv.launch` is supervised, so a dead
simulation surfaces as :class:`SimulationDied` with its exit code and stderr
instead of a hang.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import zmq
from gymnasium import spaces

from agents.protocol import codec

_log = logging.getLogger(__name__)

#: How often a wait checks on a launched simulation process.
PROCESS_POLL_S = 0.05
#: After a launched simulation exits, how long a message it sent last may still be in flight.
EXIT_GRACE_S = 0.2
#: How long a simulation gets to exit by itself (after stopSimReq) before SIGTERM, then SIGKILL.
PROCESS_GRACE_S = 2.0
#: How long closing the socket keeps trying to deliver the last (stop) reply.
REPLY_LINGER_MS = 1000
#: How long a rebind waits for the port to be released by the previous socket.
REBIND_WAIT_S = 2.0
#: Bytes of a launched simulation's stderr quoted in SimulationDied.
STDERR_TAIL_BYTES = 4000


class SimulationDied(RuntimeError):
    """A simulation launched by the Env exited while the Env waited for it."""

    def __init__(self, exit_code: int, stderr_tail: str, waiting_for: str):
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        detail = f"; its stderr ends with:\n{stderr_tail}" if stderr_tail.strip() else "; it wrote nothing to stderr"
        super().__init__(f"simulation exited with code {exit_code} while the agent waited for {waiting_for}{detail}")


def parse_info(info: str) -> dict[str, Any]:
    """The ``info`` string as a dict: its JSON object, ``{}`` when empty, else ``{"raw": info}``."""
    if not info:
        return {}
    try:
        value = json.loads(info)
    except ValueError:
        return {"raw": info}
    return value if isinstance(value, dict) else {"raw": info}


class OpenGymEnv(gym.Env):
    """A gymnasium Env served by a simulation over the ns3-gym protocol.

    ``observation_space`` and ``action_space`` are those the simulation announces,
    so they exist only after the first ``reset()``. ``step`` returns
    ``terminated=True`` on the simulation's game-over state (its ``reason``,
    ``GameOver`` or ``SimulationEnd``, is in ``info["reason"]``) and never
    ``truncated``. The raw last state, with the ``info`` string as received, is
    ``last_state``.

    Each episode gets a fresh REP socket on the same port: the old one is
    closed and rebound right after the game-over reply (or at ``reset`` when an
    episode was abandoned), so nothing queued by an earlier simulation can reach
    the next one, and a simulation started for the next episode finds the new
    socket already listening.
    """

    def __init__(self, port: int = 5555, host: str = "127.0.0.1", timeout_s: float = 30.0,
                 connect_timeout_s: float | None = None, ipc: str | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if connect_timeout_s is not None and not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0 picks a free one), got {port}")
        self.host = host
        self.timeout_s = float(timeout_s)
        #: the wait in ``reset`` for a simulation to connect (it covers the simulation's start-up)
        self.connect_timeout_s = float(connect_timeout_s or timeout_s)
        self.port = int(port)
        #: listen on ipc://<ipc> (a Unix socket; ``@NAME``: Linux's abstract namespace) instead of host:port
        self.ipc = ipc
        self.sim_process_id: int | None = None
        self.last_state: codec.EnvState | None = None
        self._ctx = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._process: subprocess.Popen | None = None
        self._stderr_path: Path | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._obs_codec: codec.SpaceCodec | None = None
        self._act_codec: codec.SpaceCodec | None = None
        # Discrete actions have few encodings: each EnvActMsg is built once and reused (hot path).
        self._act_bytes: dict[int, bytes] = {}
        self._owes_reply = False  # a state was received and not answered yet
        self._served = False  # the socket has talked to a simulation since it was bound
        self._last_obs: Any = None
        self._bind(retry_s=0.0)

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.ipc}" if self.ipc else f"tcp://{self.host}:{self.port}"

    @property
    def process(self) -> subprocess.Popen | None:
        """The simulation started by :meth:`launch`, if any."""
        return self._process

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Wait for a simulation to connect and return its first observation and info.

        A simulation that ends at once (its first state is game over) is already
        answered: ``info`` has its ``reason`` and ``last_state.game_over`` is set.
        """
        super().reset(seed=seed)
        self._require_open()
        if self._served:
            self._end_connection()
        init_data = self._recv("a simulation to connect (SimInitMsg)", self.connect_timeout_s)
        self._served = True
        try:
            init = codec.parse_sim_init(init_data)
        except codec.ProtocolError:
            self._send(codec.build_sim_init_ack(done=True, stop_sim=True))
            raise
        self.sim_process_id = init.sim_process_id
        self.observation_space = init.obs_space
        self.action_space = init.act_space
        self._obs_codec = codec.SpaceCodec(init.obs_space)
        self._act_codec = codec.SpaceCodec(init.act_space)
        self._act_bytes = {}
        self._send(codec.build_sim_init_ack(done=True, stop_sim=False))
        obs, _reward, _terminated, info = self._receive_state("the first EnvStateMsg")
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Answer the pending state with ``action`` and return the next state."""
        self.reply(action)
        return self.next_state()

    def reply(self, action: Any) -> None:
        """Answer the pending state with ``action`` now; :meth:`next_state` then waits for the next state.

        The two halves of :meth:`step`, for an agent with work to do after its answer is out (shadow
        policies, logging) while the simulation runs on.
        """
        if not self._owes_reply:
            raise RuntimeError("no pending state to answer: call reset() first (one episode is one connection)")
        self._send(self._encode_action(action))
        self._owes_reply = False

    def next_state(self) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Wait for the state that follows the answer sent by :meth:`reply`; returns what :meth:`step` does."""
        if self._owes_reply:
            raise RuntimeError("the pending state is not answered yet: reply() first")
        obs, reward, terminated, info = self._receive_state("the next EnvStateMsg")
        return obs, reward, terminated, False, info

    def close(self) -> None:
        """Stop the simulation (stopSimReq to a pending state), close the socket, reap a launched process."""
        if self._socket is not None:
            self._stop_pending_state()
            self._socket.close(linger=REPLY_LINGER_MS)
            self._socket = None
            self._ctx.term()
        self._reap_process()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        super().close()

    # ------------------------------------------------------------------ simulation process

    def launch(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stderr_path: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen:
        """Start a simulation process that the Env supervises while it waits (and reaps on close).

        Its stderr goes to ``stderr_path`` (a temporary file by default) so that
        :class:`SimulationDied` can quote its tail. It runs in its own process
        group so that closing the Env leaves no orphans behind.
        """
        self._require_open()
        self._reap_process()
        if stderr_path is None:
            if self._tmpdir is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="opengym-env-")
            stderr_path = Path(self._tmpdir.name) / f"sim-{time.monotonic_ns()}.stderr"
        self._stderr_path = Path(stderr_path)
        with open(self._stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                list(cmd),
                env=None if env is None else dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        self._apply_recv_timeout()
        return self._process

    def _reap_process(self) -> None:
        proc = self._process
        if proc is None:
            return
        try:
            proc.wait(timeout=PROCESS_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=PROCESS_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        # Children the simulation left behind in its process group.
        _signal_group(proc, signal.SIGKILL)
        self._process = None
        self._apply_recv_timeout()

    def _stderr_tail(self) -> str:
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        with open(self._stderr_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - STDERR_TAIL_BYTES))
            return f.read().decode("utf-8", errors="replace").strip()

    # ------------------------------------------------------------------ wire

    def _bind(self, retry_s: float) -> None:
        if not self.ipc and not is_loopback(self.host):
            _log.warning("the agent listens on %s, beyond this machine: any host that reaches the port can drive "
                         "it (the ns3-gym protocol has no authentication); bind 127.0.0.1 unless the simulation "
                         "runs elsewhere", self.host)
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        sock.setsockopt(zmq.SNDTIMEO, max(1, round(self.timeout_s * 1000)))
        address = self.endpoint if self.ipc else f"tcp://{self.host}:{self.port if self.port else '*'}"
        deadline = time.monotonic() + retry_s
        while True:
            try:
                sock.bind(address)
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                    sock.close(linger=0)
                    raise OSError(exc.errno, f"cannot bind the agent socket at {address}: {exc}") from exc
                time.sleep(0.01)
        if not self.port and not self.ipc:
            self.port = int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self._socket = sock
        self._served = False
        self._apply_recv_timeout()

    def _end_connection(self) -> None:
        """Release the current simulation (stopSimReq if it waits) and rebind, so stale peers cannot leak in."""
        self._stop_pending_state()
        self._require_open().close(linger=REPLY_LINGER_MS)
        self._socket = None
        self._bind(retry_s=REBIND_WAIT_S)

    def _apply_recv_timeout(self) -> None:
        # Without a process to watch, one blocking receive covers the whole timeout; with one,
        # receives come in slices so a dead simulation is noticed within PROCESS_POLL_S.
        if self._socket is not None:
            slice_s = self.timeout_s if self._process is None else min(self.timeout_s, PROCESS_POLL_S)
            self._socket.setsockopt(zmq.RCVTIMEO, max(1, round(slice_s * 1000)))

    def _recv(self, waiting_for: str, timeout_s: float | None = None) -> bytes:
        sock = self._require_open()
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        while True:
            try:
                return sock.recv()
            except zmq.Again:
                pass
            proc = self._process
            if proc is not None and proc.poll() is not None:
                if sock.poll(round(EXIT_GRACE_S * 1000), zmq.POLLIN):
                    return sock.recv()
                raise SimulationDied(proc.returncode, self._stderr_tail(), waiting_for)
            if time.monotonic() - start >= timeout_s:
                raise TimeoutError(
                    f"no message from the simulation at {self.endpoint} within {timeout_s:g} s "
                    f"(waiting for {waiting_for})"
                )

    def _encode_action(self, action: Any) -> bytes:
        if isinstance(self.action_space, spaces.Discrete) and isinstance(action, (int, np.integer)):
            data = self._act_bytes.get(action)
            if data is None:
                data = codec.build_env_act(self._act_codec, action)
                if 0 <= action < self.action_space.n:
                    self._act_bytes[int(action)] = data
            return data
        return codec.build_env_act(self._act_codec, action)

    def _send(self, data: bytes) -> None:
        self._require_open().send(data)

    def _stop_pending_state(self) -> None:
        """Answer a state we still owe a reply with stopSimReq."""
        if not self._owes_reply:
            return
        self._owes_reply = False
        try:
            self._send(codec.build_env_act(None, None, stop_sim=True))
        except zmq.ZMQError as exc:
            # EFSM: the reply already went out and only our bookkeeping missed it (a signal
            # landed between the send and the flag update): nothing is owed.
            if exc.errno != zmq.EFSM:
                raise

    def _receive_state(self, waiting_for: str) -> tuple[Any, float, bool, dict[str, Any]]:
        """Receive a state; answer a game-over state with stopSimReq at once and free the port for the next one."""
        data = self._recv(waiting_for)
        self._owes_reply = True
        state = codec.parse_env_state(data, self._obs_codec)
        self.last_state = state
        info = parse_info(state.info)
        obs = self._last_obs if state.obs is None else state.obs
        self._last_obs = obs
        if state.game_over:
            info["reason"] = state.reason
            # Rebinding now (not at the next reset) means a simulation started for the next
            # episode can only ever reach the fresh socket.
            self._end_connection()
        return obs, state.reward, state.game_over, info

    def _require_open(self) -> zmq.Socket:
        if self._socket is None:
            raise RuntimeError(f"the Env at {self.endpoint} is closed")
        return self._socket


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(proc.pid, sig)
