"""The simulation side of the ns3-gym bridge: one control point talking to one agent.

Pure Python (a ZeroMQ REQ socket of our own, emulation.zmtp, and the shared
codec); the ns-3 glue calls it at each control tick. The simulation connects a
REQ socket and speaks first (SimInitMsg), then alternates EnvStateMsg ->
EnvActMsg. Every wait has a timeout, so a dead or stuck agent becomes a
:class:`ControlPointError` naming the control point and endpoint instead of a
hung simulation (ns3-gym's worst failure mode).
"""

from __future__ import annotations

import json
import logging
import os
import time
from array import array
from typing import Any

import numpy as np
from gymnasium import spaces

from agents.protocol import codec
from agents.protocol import opengym_pb2 as pb
from emulation.zmtp import ReqSocket, ZmtpClosed, ZmtpError, ZmtpTimeout

_log = logging.getLogger(__name__)

#: Most distinct Discrete replies remembered (an agent normally sends one encoding per action).
DISCRETE_REPLY_CACHE = 4096

#: Longest wait for the agent's reply to the final (game-over) state: the agent owes
#: nothing after it, so closing must not stall the end of a simulation.
CLOSE_REPLY_TIMEOUT_S = 2.0


def routing_id(identity: str) -> bytes:
    """A ZeroMQ routing id for ``identity``: at most 255 bytes, never starting with a zero byte."""
    data = identity.encode()
    return data if len(data) <= 255 else data[:120] + b"..." + data[-132:]


class ControlPointError(RuntimeError):
    """A control point cannot get a valid action from its agent (timeout, bad action, malformed reply)."""


class AgentStopped(ControlPointError):
    """The agent asked the simulation to stop (stopSimReq)."""


class OpenGymInterface:
    """One control point's connection to an agent over the ns3-gym protocol.

    ``step`` is one exchange; ``send_state`` and ``receive_action`` are its two
    halves, for a simulation that runs on while the agent decides. The wall time
    the simulation spends on each exchange is kept (``round_trips_s``) so it can
    report the control loop's cost.
    """

    def __init__(
        self,
        name: str,
        obs_space: spaces.Space,
        act_space: spaces.Space,
        host: str = "127.0.0.1",
        port: int = 5555,
        timeout_s: float = 30.0,
        connect_timeout_s: float | None = None,
        ipc: str | None = None,
    ):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if connect_timeout_s is not None and not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        self.name = name
        self.obs_space = obs_space
        self.act_space = act_space
        self.host = host
        self.port = int(port)
        #: the agent's Unix socket name (ipc://), used instead of host:port when set
        self.ipc = ipc
        self.timeout_s = float(timeout_s)
        #: the wait for the agent's SimInitAck, which includes the agent's own start-up
        self.connect_timeout_s = float(connect_timeout_s or timeout_s)
        self._obs_codec = codec.SpaceCodec(obs_space)
        self._act_codec = codec.SpaceCodec(act_space)
        self._socket: ReqSocket | None = None
        self._stopped = False
        # A state (or SimInitMsg) is out and its reply not yet received: owed before the final state.
        self._awaiting_reply = False
        self._send_s = 0.0  # wall time the last send took
        self._round_trips_s = array("d")
        # A Discrete action's reply bytes map to one valid action: decode each distinct reply once (hot path).
        self._cache_replies = isinstance(act_space, spaces.Discrete)
        self._discrete_replies: dict[bytes, int] = {}
        # Reused per step: the message object, filled in place, saves an allocation per field.
        self._state_msg = pb.EnvStateMsg()

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.ipc}" if self.ipc else f"tcp://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._socket is not None

    @property
    def round_trips_s(self) -> np.ndarray:
        """Wall time the simulation spent on each exchange, in seconds: sending the state plus waiting for
        its action (the whole round trip, unless the simulation ran on between the two halves)."""
        return np.frombuffer(self._round_trips_s, dtype=np.float64).copy()

    def _where(self) -> str:
        return f"control point '{self.name}' at {self.endpoint}"

    def connect(self, identity: str | None = None) -> None:
        """Connect, announce the spaces and wait for the agent's SimInitAck (up to ``connect_timeout_s``).

        ``identity`` names this control point to a peer that serves many (a policy server's ROUTER
        socket sees it as the connection's routing id; a plain REP agent never sees it). It is a
        ZeroMQ handshake property: the bytes of the ns3-gym messages are unchanged.
        """
        if self._socket is not None:
            raise ControlPointError(f"{self._where()} is already connected")
        init = codec.build_sim_init(self.obs_space, self.act_space, sim_process_id=os.getpid(), waf_shell_process_id=0)
        sock = ReqSocket(self.endpoint, routing_id(identity) if identity else b"")
        try:
            sock.connect(self.connect_timeout_s)
        except ZmtpTimeout as exc:
            sock.close()
            raise ControlPointError(f"no answer from agent for {self._where()} within {self.connect_timeout_s:g} s "
                                    f"(waiting for SimInitAck: {exc})") from exc
        except ZmtpError as exc:
            sock.close()
            raise ControlPointError(f"cannot connect {self._where()}: {exc}") from exc
        self._socket = sock
        self._stopped = False
        self._send(init, "SimInitMsg")
        reply = self._receive("SimInitAck", self.connect_timeout_s)
        try:
            _done, stop = codec.parse_sim_init_ack(reply)
        except codec.ProtocolError as exc:
            self._drop_socket()
            raise ControlPointError(f"malformed SimInitAck from agent for {self._where()}: {exc}") from exc
        if stop:
            self._stopped = True
            self._drop_socket()
            raise AgentStopped(f"agent for {self._where()} refused the simulation (stopSimReq in SimInitAck)")

    def step(self, obs: Any, reward: float, info: dict[str, Any]) -> Any:
        """Send one state and return the agent's action, checked against the action space."""
        self.send_state(obs, reward, info)
        return self.receive_action()

    def send_state(self, obs: Any, reward: float, info: dict[str, Any]) -> None:
        """Send one state; its action is owed to :meth:`receive_action`, which the simulation may call
        later (it runs on in between: a decision delay in simulated time)."""
        if self._awaiting_reply:
            raise ControlPointError(f"{self._where()}: a state was sent before the previous one's action arrived")
        msg = self._state_msg
        try:
            self._obs_codec.encode(obs, msg.obsData)
        except codec.ProtocolError as exc:
            raise ControlPointError(f"observation does not fit the space of {self._where()}: {exc}") from exc
        msg.reward = float(reward)
        msg.info = json.dumps(info)
        t0 = time.perf_counter()
        self._send(msg.SerializeToString(), "EnvStateMsg")
        self._send_s = time.perf_counter() - t0

    def receive_action(self) -> Any:
        """The action answering the state sent last, checked against the action space."""
        t0 = time.perf_counter()
        reply = self._receive("EnvActMsg")
        self._round_trips_s.append(self._send_s + time.perf_counter() - t0)
        action = self._discrete_replies.get(reply)
        if action is not None:
            return action
        try:
            action, stop = codec.parse_env_act(reply, self._act_codec)
        except codec.ProtocolError as exc:
            raise ControlPointError(f"malformed action from agent for {self._where()}: {exc}") from exc
        if stop:
            self._stopped = True
            self._drop_socket()
            raise AgentStopped(f"agent for {self._where()} asked the simulation to stop (stopSimReq)")
        if not self._act_codec.contains(action):
            raise ControlPointError(
                f"agent for {self._where()} sent action {action!r} outside the action space {self.act_space}"
            )
        if self._cache_replies and len(self._discrete_replies) < DISCRETE_REPLY_CACHE:
            self._discrete_replies[reply] = action
        return action

    @property
    def last_round_trip_s(self) -> float:
        """Wall time of the latest exchange (see :attr:`round_trips_s`)."""
        return self._round_trips_s[-1]

    def close(
        self, obs: Any, reward: float, info: dict[str, Any], reason: str = "SimulationEnd"
    ) -> None:
        """Send the final (game-over) state, wait briefly for the agent's reply, then close the socket.

        Never raises for a missing reply: the simulation is ending anyway.
        """
        if reason not in codec.REASON_CODES:
            raise ValueError(f"reason must be one of {sorted(codec.REASON_CODES)}, got {reason!r}")
        sock = self._socket
        if sock is None:
            return
        try:
            if not self._stopped:
                data = codec.build_env_state(
                    self._obs_codec, obs, reward, game_over=True, reason=reason, info=json.dumps(info)
                )
                wait_s = min(self.timeout_s, CLOSE_REPLY_TIMEOUT_S)
                if self._awaiting_reply:
                    self._awaiting_reply = False
                    sock.recv(wait_s)  # the reply still owed: then the socket may send again
                sock.send(data, wait_s)
                sock.recv(wait_s)
        except ZmtpError as exc:
            # The agent is gone or slow: nothing is owed after the final state.
            _log.debug("no reply to the final state for %s: %s", self._where(), exc)
        except codec.ProtocolError as exc:
            raise ControlPointError(f"final observation does not fit the space of {self._where()}: {exc}") from exc
        finally:
            self._drop_socket()

    def _send(self, data: bytes, what: str) -> None:
        """Send one request; its reply is owed from then on. A failure closes the (now unusable) REQ socket."""
        sock = self._socket
        if sock is None:
            raise ControlPointError(f"{self._where()} is not connected (connect() first, or it was closed)")
        try:
            sock.send(data, self.timeout_s)
        except ZmtpError as exc:
            self._drop_socket()
            raise ControlPointError(f"wire error for {self._where()} sending {what}: {exc}") from exc
        # Until the reply is in, the socket may not send: close() collects it first (a decision still
        # pending when the run ends, or a wait cut short by a stop signal).
        self._awaiting_reply = True

    def _receive(self, expected: str, timeout_s: float | None = None) -> bytes:
        """Wait for the reply owed to the last request; a failure closes the (now unusable) REQ socket."""
        sock = self._socket
        if sock is None:
            raise ControlPointError(f"{self._where()} is not connected (connect() first, or it was closed)")
        timeout_s = timeout_s or self.timeout_s
        try:
            reply = sock.recv(timeout_s)
        except ZmtpTimeout as exc:
            self._drop_socket()
            raise ControlPointError(
                f"no answer from agent for {self._where()} within {timeout_s:g} s (waiting for {expected})"
            ) from exc
        except ZmtpClosed as exc:
            self._drop_socket()
            raise ControlPointError(f"the agent for {self._where()} closed the connection while the simulation "
                                    f"waited for {expected} (did it exit?)") from exc
        except ZmtpError as exc:
            self._drop_socket()
            raise ControlPointError(f"wire error for {self._where()} waiting for {expected}: {exc}") from exc
        self._awaiting_reply = False
        return reply

    def _drop_socket(self) -> None:
        self._awaiting_reply = False
        if self._socket is not None:
            self._socket.close()
            self._socket = None
