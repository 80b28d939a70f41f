"""Control points served over the ns3-gym wire: the AQM's p' and each video
client's quality choice.

AQM: DualPI2 runs with ``ExternalControl``; at every Tupdate tick the queue
calls our hook, which sends the ``AqmObservation`` and applies the p' that
comes back. The tick happens at the same simulated instants as the in-queue
PI2 update, and the observation carries the same float64 queue delay, so an
external PI2 agent reproduces the in-queue run exactly.

ABR: a ``decide`` function for the video client that sends the
``AbrObservation`` with the QoE_lin reward of the previous chunk.

Each point's ``decision_delay`` says when its actions take effect
(emulation/decision_delay.py): at the state's instant (``none``, the default),
a fixed time later, or after the decision's measured wall-clock time.

Rewards (documented in docs/run-directory.md and configurable):
- ABR: QoE_lin of the chunk just downloaded.
- AQM: ``w_util * utilisation - w_l * max(0, l_sojourn - l_target)/l_target
  - w_c * max(0, c_sojourn - c_target)/c_target - w_drop * drop_fraction``.

A failure (dead agent, malformed or out-of-space action) is recorded on the
simulation (the hooks run under ``Simulation.guard``), which stops and writes
what it gathered with the run marked failed; an agent's stopSimReq ends the
run cleanly. Either way every other agent's episode is closed with a final
state whose ``info`` says why (``error`` or ``ended_by``) and whose reason is
``GameOver`` for a failure, ``SimulationEnd`` otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gymnasium import spaces

from agents.protocol.control_points import AbrObservation, AqmObservation, aqm_action_grid
from agents.protocol.qoe import qoe_lin
from emulation.config import AbrControlConfig, AqmControlConfig
from emulation.decision_delay import DecisionTiming, Deferred, add_actions
from emulation.opengym import ControlPointError, OpenGymInterface


def episode_end(sim) -> tuple[str, dict]:
    """The close reason and ``info`` entries that tell an agent how the run ended."""
    if sim.error is not None:
        return "GameOver", {"error": f"{type(sim.error).__name__}: {sim.error}"}
    if sim.ended_by is not None:
        return "SimulationEnd", {"ended_by": sim.ended_by}
    return "SimulationEnd", {}


def _control_stats(timing: DecisionTiming) -> dict:
    """summary.json's ``control.<point>``: steps, the wall time the simulation waited per answer, the delays."""
    rtt = timing.iface.round_trips_s * 1e6
    stats = {"steps": int(rtt.size), "round_trip_p50_us": None, "round_trip_p99_us": None}
    if rtt.size:
        stats.update(round_trip_p50_us=float(np.percentile(rtt, 50)), round_trip_p99_us=float(np.percentile(rtt, 99)))
    return {**stats, **timing.summary()}


class AqmControlPoint:
    """The DualPI2 bottleneck's p', owned by an agent process."""

    name = "aqm"

    def __init__(self, config: AqmControlConfig):
        self.config = config
        self.grid = aqm_action_grid(config.n_actions) if config.action == "discrete" else None
        n_obs = len(AqmObservation.field_names())
        self.obs_space = spaces.Box(0.0, np.inf, shape=(n_obs,), dtype=np.float64)
        self.act_space = (
            spaces.Discrete(config.n_actions) if self.grid is not None else spaces.Box(0.0, 1.0, (1,), np.float64)
        )
        self.iface = OpenGymInterface(self.name, self.obs_space, self.act_space, config.host, config.port,
                                      config.timeout_s, config.connect_timeout_s, config.ipc)
        self.timing = DecisionTiming(self.name, config.decision_delay, self.iface, self._p_prime)
        self._tick_index = 0
        self._ticks_skipped = 0  # ticks that came while the agent still decided on an earlier state
        self._last_obs: AqmObservation | None = None
        self._reward = 0.0
        self._deferred: Deferred | None = None

    def attach(self, sim) -> None:
        ns = sim.ns
        queue = ns.DynamicCast[ns.DualPi2QueueDisc](sim.net.queue_disc)
        if not queue:
            raise ControlPointError(f"the AQM control point needs a dualpi2 bottleneck, not '{sim.net.queue_type}'")
        self.sim, self.ns, self.queue = sim, ns, queue
        queue.SetAttribute("ExternalControl", ns.BooleanValue(True))
        self.rate_bps = sim.config.bottleneck.rate_mbps * 1e6
        self._prev = self._snapshot()
        self.timing.attach(sim)
        self.iface.connect(control_point_identity(self.name, sim))
        # C++ holds only a reference: keep the callable alive for the whole run.
        self._hook = sim.guard(self._tick)
        self._take_effect_fn = self._take_effect  # one bound method, so Simulation.schedule wraps it once
        queue.SetExternalUpdateHook(self._hook)

    def _snapshot(self) -> dict:
        c = self.queue.GetCounters()
        return {
            "time_s": self.ns.Simulator.Now().GetSeconds(),
            "c_in": int(c.cEnqueuedBytes), "l_in": int(c.lEnqueuedBytes),
            "out": int(c.cDequeuedBytes) + int(c.lDequeuedBytes),
            "c_drops": int(c.classicDrops), "c_marks": int(c.classicMarks),
            "l_marks": int(c.coupledMarks) + int(c.stepMarks), "l_drops": int(c.lDrops),
            "tail": int(c.tailDrops),
            "l_pkts": int(c.lEnqueuedPackets), "c_pkts": int(c.cEnqueuedPackets),
        }

    def _observe(self) -> AqmObservation:
        q, now = self.queue, self._snapshot()
        prev, self._prev = self._prev, now
        dt = max(now["time_s"] - prev["time_s"], 1e-9)
        departure_bps = (now["out"] - prev["out"]) * 8 / dt
        return AqmObservation(
            qdelay_s=q.GetQueueDelay().GetSeconds(),
            c_sojourn_s=q.GetQueueSojourn(0).GetSeconds(),
            l_sojourn_s=q.GetQueueSojourn(1).GetSeconds(),
            c_len_pkts=q.GetQueueLength(0), l_len_pkts=q.GetQueueLength(1),
            c_len_bytes=q.GetQueueBytes(0), l_len_bytes=q.GetQueueBytes(1),
            c_arrival_bps=(now["c_in"] - prev["c_in"]) * 8 / dt,
            l_arrival_bps=(now["l_in"] - prev["l_in"]) * 8 / dt,
            departure_bps=departure_bps,
            utilisation=departure_bps / self.rate_bps,
            c_drops=now["c_drops"] - prev["c_drops"], c_marks=now["c_marks"] - prev["c_marks"],
            l_marks=now["l_marks"] - prev["l_marks"], l_drops=now["l_drops"] - prev["l_drops"],
            tail_drops=now["tail"] - prev["tail"],
            p_prime=q.GetBaseProbability(), interval_s=dt,
        )

    def reward(self, obs: AqmObservation) -> float:
        w = self.config.reward
        packets = max(obs.departure_bps * obs.interval_s / 8 / 1500, 1.0)
        drop_fraction = (obs.c_drops + obs.l_drops + obs.tail_drops) / packets
        return (
            w.utilisation * min(obs.utilisation, 1.0)
            - w.l_delay * max(0.0, obs.l_sojourn_s - w.l_target_s) / w.l_target_s
            - w.c_delay * max(0.0, obs.c_sojourn_s - w.c_target_s) / w.c_target_s
            - w.drops * drop_fraction
        )

    def _info(self, obs: AqmObservation) -> dict:
        return {"sim_time_s": self.ns.Simulator.Now().GetSeconds(), "tick": self._tick_index,
                "p_cl": self.queue.GetCoupledProbability(), "p_c": self.queue.GetClassicProbability()}

    def _tick(self) -> None:
        self._tick_index += 1
        if self._tick_index % self.config.every_k:
            return
        if self.timing.pending:
            self._ticks_skipped += 1
            return
        obs = self._observe()
        self._last_obs = obs
        answer = self.timing.ask(obs.to_vector(), self._reward, self._info(obs))
        self._reward = self.reward(obs)
        if isinstance(answer, Deferred):
            self._deferred = answer
            self.sim.schedule(answer.delay_s, self._take_effect_fn)
        else:
            self._apply(answer)

    def _take_effect(self) -> None:
        self._apply(self._deferred.collect())

    def _p_prime(self, action) -> float:
        return float(self.grid[int(action)]) if self.grid is not None else float(np.asarray(action).ravel()[0])

    def _apply(self, action) -> None:
        p_prime = self._p_prime(action)
        if not self.queue.SetBaseProbability(p_prime):
            raise ControlPointError(f"control point 'aqm': agent's p'={p_prime!r} is outside [0, 1]")

    def finish(self, sim) -> None:
        obs = self._last_obs or self._observe()
        reason, end_info = episode_end(sim)
        try:
            self.iface.close(obs.to_vector(), self._reward, {**self._info(obs), **end_info}, reason)
        finally:
            stats = _control_stats(self.timing)
            sim.summary_extra.setdefault("control", {})[self.name] = {**stats, "ticks_skipped": self._ticks_skipped}
            add_actions(sim, [self.timing])


class AbrControlPoint:
    """One video client's quality choice, answered by an agent process."""

    def __init__(self, client: str, n_levels: int, config: AbrControlConfig, index: int):
        """The control point of video client ``index``: its agent is at port + index (or ipc ``<ipc>-index``)."""
        self.name = f"abr-{client}"
        n_obs = AbrObservation.vector_size(n_levels)
        self.obs_space = spaces.Box(0.0, np.inf, shape=(n_obs,), dtype=np.float64)
        self.act_space = spaces.Discrete(n_levels)
        self.iface = OpenGymInterface(self.name, self.obs_space, self.act_space, config.host, config.port + index,
                                      config.timeout_s, config.connect_timeout_s,
                                      f"{config.ipc}-{index}" if config.ipc else None)
        self.timing = DecisionTiming(self.name, config.decision_delay, self.iface, float)
        self._prev_quality: int | None = None
        self._last: AbrObservation | None = None
        self._step = 0

    def connect(self, sim, identity: str | None = None) -> None:
        self.timing.attach(sim)
        self.iface.connect(identity)

    def chunk_reward(self, obs: AbrObservation) -> float:
        """QoE_lin of the chunk just downloaded (0 before the first; the first chunk pays no smoothness term)."""
        if obs.chunk_index == 0:
            return 0.0
        rates_bps = np.asarray(obs.bitrates_bps, dtype=np.float64)
        previous_bps = None if self._prev_quality is None else rates_bps[self._prev_quality]
        return float(qoe_lin([rates_bps[obs.last_quality]], [obs.rebuffer_s], previous_bps)[0])

    def decide(self, obs: AbrObservation) -> int | Deferred:
        """The next chunk's quality, or (with a decision delay) a :class:`Deferred` that gives it later."""
        reward = self.chunk_reward(obs)
        if obs.chunk_index > 0:
            self._prev_quality = obs.last_quality
        self._last = obs
        info = {"chunk": obs.chunk_index, "buffer_s": obs.buffer_s, "step": self._step}
        self._step += 1
        return self.timing.ask(obs.to_vector(), reward, info)

    def close(self, reason: str = "SimulationEnd", end_info: dict | None = None) -> dict:
        if self._last is not None:
            final = self._last
            info = {"chunk": final.chunk_index, "final": True, **(end_info or {})}
            self.iface.close(final.to_vector(), 0.0, info, reason)
        return _control_stats(self.timing)


def control_point_identity(name: str, sim) -> str:
    """``<control point>@<run directory>``: how a policy server tells the control points of many runs apart
    (and where it finds each run's directory for the decision logs)."""
    return f"{name}@{Path(sim.out_dir).resolve()}"


class AbrControlGroup:
    """Component that connects every ABR control point before the run and closes them after."""

    def __init__(self, points: list[AbrControlPoint]):
        self.points = points

    def attach(self, sim) -> None:
        for point in self.points:
            point.connect(sim, control_point_identity(point.name, sim))

    def finish(self, sim) -> None:
        stats = sim.summary_extra.setdefault("control", {})
        reason, end_info = episode_end(sim)
        try:
            for point in self.points:
                stats[point.name] = point.close(reason, end_info)
        finally:
            add_actions(sim, [point.timing for point in self.points])
