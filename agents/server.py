"""One policy server for many control points: ``python -m agents server``.

A per-point agent process (``agents serve``) loads its own copy of the model, so a run with an
LLM AQM and four LLM video clients held five. The server holds one model per control kind and
answers any number of control points — all of a run, or all of a sweep's runs — over the
unchanged ns3-gym wire: it binds one ROUTER socket, and each control point's REQ socket still
sees a plain REP peer (the ROUTER answers each request on the connection it came from). Our
simulation names each connection ``<control point>@<run directory>`` (its ZeroMQ routing id),
so decisions land in that run's ``agents/<control point>/decisions.parquet`` whenever the
directory is reachable from here (the same machine or a shared filesystem); other peers get a
folder under ``--out``.

Decisions of LLM policies that arrive close together are batched into one forward pass (up to
``max_batch`` streams, waiting at most ``max_wait_ms`` for more unless every connected stream is
already waiting), each stream keeping its own KV cache and positions. Classic policies answer at once. The acting answer always goes out first;
shadow policies decide after it, while the simulation runs on.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from agents.decisions import DecisionLog, warm_up
from agents.env import is_loopback, parse_info
from agents.policy import Policy, observe_reward, prepare_next
from agents.protocol import codec
from agents.protocol.control_points import AqmObservation
from agents.serve import DECISIONS_FILE, _action_values, _sim_time_s, obs_fields, observation, to_space_action

_log = logging.getLogger(__name__)
_AQM_SIZE = len(AqmObservation.field_names())

#: A factory of (acting policy, shadow policies) for a new stream of one control kind.
StreamPolicies = Callable[[], tuple[Policy, list[Policy]]]


@dataclass
class _Stream:
    """One control point's episode: its spaces, policies, log and the state that waits for an answer."""

    identity: bytes
    name: str
    control: str
    obs_codec: codec.SpaceCodec
    act_codec: codec.SpaceCodec
    action_space: object
    policy: Policy
    shadows: list[Policy]
    log: DecisionLog | None
    step: int = 0
    arrived_s: float = 0.0
    obs_vec: np.ndarray | None = None
    obs_view: object = None
    reward: float = 0.0
    info: str = ""
    sim_time_s: float = math.nan
    pending: bool = False
    act_cache: dict = field(default_factory=dict)


def _decision_dir(identity: str, out: Path | None) -> Path | None:
    """Where a stream's decisions go: ``<run dir>/agents/<point>`` if the identity names a reachable run."""
    name, sep, run_dir = identity.partition("@")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "stream"
    if sep and Path(run_dir).is_absolute() and Path(run_dir).is_dir():
        return Path(run_dir) / "agents" / safe
    if out is None:
        return None
    return out / re.sub(r"[^A-Za-z0-9._-]", "_", identity)[:200]


class PolicyServer:
    """The server's state and loop (see the module docstring); :func:`run_server` is its command line."""

    def __init__(self, policies: dict[str, StreamPolicies], *, host: str = "127.0.0.1", port: int = 0,
                 out: str | Path | None = None, max_batch: int = 16, max_wait_ms: float = 2.0,
                 streams: int | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        if not policies:
            raise ValueError("a policy server needs a policy for at least one control kind (aqm, abr)")
        self.policies = policies
        self.out = Path(out) if out is not None else None
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self.expected_streams = streams
        self.finished = 0
        self.decisions = 0
        self.batches: list[int] = []
        self._streams: dict[bytes, _Stream] = {}
        self._ctx = zmq.Context()
        self.socket = self._ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 1000)
        if not is_loopback(host):
            _log.warning("the policy server listens on %s, beyond this machine: any host that reaches the port "
                         "can drive it (the ns3-gym protocol has no authentication)", host)
        self.socket.bind(f"tcp://{host}:{port if port else '*'}")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        warm_up()

    # ------------------------------------------------------------------ wire
    def _reply(self, stream_id: bytes, data: bytes) -> None:
        self.socket.send_multipart([stream_id, b"", data])

    def _receive(self, timeout_s: float | None) -> bool:
        """Take one message if one arrives within ``timeout_s`` (None: wait forever)."""
        if timeout_s is not None and not self.socket.poll(max(0, round(timeout_s * 1000))):
            return False
        frames = self.socket.recv_multipart()
        if len(frames) != 3 or frames[1] != b"":
            _log.warning("dropped a message that is not a REQ peer's (%d frames)", len(frames))
            return True
        stream_id, data = frames[0], frames[2]
        stream = self._streams.get(stream_id)
        try:
            if stream is None:
                self._open(stream_id, data)
            else:
                self._state(stream, data)
        except codec.ProtocolError as exc:
            _log.error("malformed message from %s: %s; ending its episode", stream_id.decode(errors="replace"), exc)
            self._reply(stream_id, codec.build_env_act(None, None, stop_sim=True))
            self._close(stream_id)
        return True

    def _open(self, stream_id: bytes, data: bytes) -> None:
        init = codec.parse_sim_init(data)
        obs_space, act_space = init.obs_space, init.act_space
        size = int(np.prod(obs_space.shape)) if obs_space.shape is not None else 0
        control = "aqm" if size == _AQM_SIZE else "abr"
        identity = stream_id.decode(errors="replace")
        if control not in self.policies:
            _log.error("%s is an %s control point; this server serves %s", identity, control, sorted(self.policies))
            self._reply(stream_id, codec.build_sim_init_ack(done=True, stop_sim=True))
            return
        policy, shadows = self.policies[control]()
        for p in (policy, *shadows):
            p.reset()
        name = identity.partition("@")[0] or control
        directory = _decision_dir(identity, self.out)
        log = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            log = DecisionLog(directory / DECISIONS_FILE, name, control, obs_fields(control, obs_space), policy.name)
        self._streams[stream_id] = _Stream(stream_id, name, control, codec.SpaceCodec(obs_space),
                                           codec.SpaceCodec(act_space), act_space, policy, shadows, log)
        _log.info("stream %s: %s control point, %s acting%s", identity, control, policy.name,
                  "".join(f", {s.name} shadowing" for s in shadows))
        self._reply(stream_id, codec.build_sim_init_ack(done=True, stop_sim=False))

    def _state(self, stream: _Stream, data: bytes) -> None:
        state = codec.parse_env_state(data, stream.obs_codec)
        obs = stream.obs_vec if state.obs is None else np.asarray(state.obs, dtype=np.float64).ravel()
        info = parse_info(state.info)
        if stream.step > 0:
            for p in (stream.policy, *stream.shadows):
                observe_reward(p, state.reward)
        stream.obs_vec, stream.reward, stream.info = obs, state.reward, state.info
        stream.sim_time_s = _sim_time_s(info)
        if state.game_over:
            if stream.log is not None:
                stream.log.append(step=stream.step, sim_time_s=stream.sim_time_s, policy=stream.policy.name,
                                  role="acting", obs=obs, action=(), reward=state.reward, decision_ms=math.nan,
                                  done=True, info=state.info)
            self._reply(stream.identity, codec.build_env_act(None, None, stop_sim=True))
            self._close(stream.identity)
            return
        stream.obs_view = observation(stream.control, obs)
        stream.arrived_s = time.perf_counter()
        stream.pending = True

    def _close(self, stream_id: bytes) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            if stream.log is not None:
                stream.log.close()
            for p in (stream.policy, *stream.shadows):
                close = getattr(p, "close", None)
                if close is not None:
                    close()
        self.finished += 1

    # ------------------------------------------------------------------ decisions
    def _answer(self, streams: list[_Stream]) -> None:
        """Decide for ``streams`` (batched where the model allows), reply to each, then run the shadows."""
        from agents.llm_agent import LlmPolicy, act_batch

        batched = [s for s in streams if isinstance(s.policy, LlmPolicy) and s.policy.batchable]
        answers: dict[bytes, float | int] = {}
        by_model: dict[int, list[_Stream]] = {}
        for s in batched:
            by_model.setdefault(id(s.policy.decider.policy), []).append(s)
        for group in by_model.values():
            for action, s in zip(act_batch([s.policy for s in group], [s.obs_view for s in group]), group,
                                 strict=True):
                answers[s.identity] = action
            self.batches.append(len(group))
        for s in streams:
            if s.identity not in answers:
                answers[s.identity] = s.policy.act(s.obs_view)
        replied_s = time.perf_counter()
        actions = {}
        for s in streams:  # the acting answers first ...
            action = to_space_action(s.control, answers[s.identity], s.action_space)
            actions[s.identity] = action
            self._reply(s.identity, codec.build_env_act(s.act_codec, action))
            s.pending = False
            self.decisions += 1
        for s in streams:  # ... then the work ahead for the next acting decisions ...
            prepare_next(s.policy)
        for s in streams:  # ... the shadows and the log after them, while the simulations run
            if s.log is not None:
                s.log.append(step=s.step, sim_time_s=s.sim_time_s, policy=s.policy.name, role="acting",
                             obs=s.obs_vec, action=_action_values(actions[s.identity]), reward=s.reward,
                             decision_ms=(replied_s - s.arrived_s) * 1e3,
                             fallback=bool(getattr(s.policy, "last_fallback", False)), info=s.info)
            for shadow in s.shadows:
                t0 = time.perf_counter()
                raw = shadow.act(s.obs_view)
                decision_ms = (time.perf_counter() - t0) * 1e3
                prepare_next(shadow)
                if s.log is not None:
                    s.log.append(step=s.step, sim_time_s=s.sim_time_s, policy=shadow.name, role="shadow",
                                 obs=s.obs_vec, action=_action_values(to_space_action(s.control, raw, s.action_space)),
                                 reward=s.reward, decision_ms=decision_ms, info=s.info)
            s.step += 1

    def run(self, idle_timeout_s: float | None = None) -> None:
        """Serve until ``streams`` episodes have ended (if given), or no message came for ``idle_timeout_s``."""
        try:
            while self.expected_streams is None or self.finished < self.expected_streams:
                if not self._receive(idle_timeout_s):
                    _log.info("no message for %g s: stopping", idle_timeout_s)
                    return
                # gather what else arrives within the batching window, then answer
                first = min((s.arrived_s for s in self._streams.values() if s.pending), default=None)
                while first is not None:
                    waiting = [s for s in self._streams.values() if s.pending]
                    left = self.max_wait_s - (time.perf_counter() - first)
                    # every connected stream is already waiting: nobody can join the batch, answer now
                    everyone = len(waiting) == len(self._streams)
                    if len(waiting) >= self.max_batch or everyone or left <= 0 or not self._receive(left):
                        break
                waiting = [s for s in self._streams.values() if s.pending]
                if waiting:
                    self._answer(waiting)
        finally:
            for stream_id in list(self._streams):
                self._close(stream_id)
            self.socket.close()
            self._ctx.term()
