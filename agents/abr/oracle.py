"""A clairvoyant ABR planner: model-predictive control over the *true* future bandwidth.

It is the expert that imitation-learning ABR work trains against (Comyco's
"instant solver"): RobustMPC's exhaustive search over every quality plan of
the next ``horizon`` chunks, but each plan is scored with the download times
the link will really give, walked through the simulator's own buffer rules
(RTT, buffer cap and the waits it forces). It needs to see the future, so it
only acts where a simulator can show it one: the chunk-level simulator hands
it a :class:`LinkFuture` before every decision (``see_future``). It is a
teacher, never a deployable policy.

``foresight`` limits what it sees: only the first ``foresight`` chunks of each
plan download on the true link, the rest at RobustMPC's robust throughput
estimate. With one chunk (``oracle-f1``) it knows exactly how long the next
chunk would take at each quality and plans beyond that as RobustMPC would. A
learner regressing its action values fits their expectation given what it
sees; the fewer of a teacher's values turn on links the learner cannot
predict, the closer that expectation comes to the teacher's play.
"""

from __future__ import annotations

import numpy as np

from agents.abr.mpc import RobustMPC, all_plans
from agents.protocol.control_points import ABR_HORIZON, AbrObservation
from agents.protocol.qoe import QOE_LIN_REBUFFER_PENALTY, SMOOTHNESS_PENALTY


class LinkFuture:
    """The bytes a piecewise-constant, periodic link delivers from now on.

    ``times_s`` / ``bytes_per_s``: segment ``i`` (``i >= 1``) carries
    ``bytes_per_s[i]`` over ``(times_s[i-1], times_s[i]]`` and the pattern
    repeats with period ``times_s[-1] - times_s[0]`` (the Pensieve reading of
    a trace). ``now_s`` is the current offset into the period. Times returned
    are relative to now. ``rtt_s``, ``buffer_cap_s`` and ``drain_step_s`` are
    the client rules the planner must walk the buffer with.
    """

    def __init__(
        self,
        times_s: np.ndarray,
        bytes_per_s: np.ndarray,
        now_s: float,
        rtt_s: float,
        buffer_cap_s: float,
        drain_step_s: float,
    ) -> None:
        times_s = np.asarray(times_s, dtype=np.float64)
        rates = np.asarray(bytes_per_s, dtype=np.float64)
        self._t = times_s - times_s[0]
        self._rate = rates[1:]
        self._cum = np.concatenate([[0.0], np.cumsum(self._rate * np.diff(self._t))])
        self.period_s = float(self._t[-1])
        self.period_bytes = float(self._cum[-1])
        if self.period_bytes <= 0:
            raise ValueError("a link future needs some positive rate")
        self.now_s = float(now_s)
        self.rtt_s = float(rtt_s)
        self.buffer_cap_s = float(buffer_cap_s)
        self.drain_step_s = float(drain_step_s)

    def _bytes_at(self, tau_s: np.ndarray) -> np.ndarray:
        periods = np.floor(tau_s / self.period_s)
        return periods * self.period_bytes + np.interp(tau_s - periods * self.period_s, self._t, self._cum)

    def _time_of(self, total_bytes: np.ndarray) -> np.ndarray:
        """The earliest time at which ``total_bytes`` have been delivered since the period's start."""
        periods = np.floor(total_bytes / self.period_bytes)
        rem = total_bytes - periods * self.period_bytes
        idx = np.clip(np.searchsorted(self._cum, rem, side="left"), 1, len(self._cum) - 1)
        within = self._t[idx - 1] + (rem - self._cum[idx - 1]) / np.where(self._rate[idx - 1] > 0, self._rate[idx - 1], 1.0)
        return periods * self.period_s + within

    def finish_s(self, start_s: np.ndarray, size_bytes: np.ndarray) -> np.ndarray:
        """When a transfer of ``size_bytes`` that starts at ``start_s`` (both relative to now) completes."""
        tau = self.now_s + np.asarray(start_s, dtype=np.float64)
        return self._time_of(self._bytes_at(tau) + np.asarray(size_bytes, dtype=np.float64)) - self.now_s


class ClairvoyantMPC:
    """Exhaustive-search MPC over the true future link (see the module docstring).

    Ties between plans of equal score go to the lowest first quality, so decisions are reproducible.
    ``rebuffer_penalty`` above QoE_lin's 4.3 makes the expert more careful,
    which can make it easier to imitate by a policy that cannot see the future.
    """

    name = "oracle"
    control = "abr"

    def __init__(
        self,
        horizon: int = ABR_HORIZON,
        rebuffer_penalty: float = QOE_LIN_REBUFFER_PENALTY,
        smoothness_penalty: float = SMOOTHNESS_PENALTY,
        foresight: int | None = None,
    ) -> None:
        if foresight is not None and not 0 <= foresight <= horizon:
            raise ValueError(f"foresight must be in [0, horizon={horizon}] chunks, got {foresight}")
        if not 1 <= horizon <= ABR_HORIZON:
            raise ValueError(f"horizon must be in [1, {ABR_HORIZON}] (the chunk sizes an observation carries), got {horizon}")
        if rebuffer_penalty < 0 or smoothness_penalty < 0:
            raise ValueError(f"penalties must be >= 0, got {rebuffer_penalty}, {smoothness_penalty}")
        self.horizon = horizon
        self.foresight = horizon if foresight is None else foresight
        if self.foresight < horizon:
            self.name = f"oracle-f{self.foresight}"
        self._estimator = RobustMPC()
        self.rebuffer_penalty = float(rebuffer_penalty)
        self.smoothness_penalty = float(smoothness_penalty)
        self._future: LinkFuture | None = None
        self._plans: dict[tuple[int, int], np.ndarray] = {}
        #: action_scores of the last decision: what a learner can regress (the value of each action
        #: with the future known), logged by the chunk-level simulator as the row's ``action_scores``
        self.last_action_scores: np.ndarray | None = None

    def reset(self) -> None:
        self._future = None
        self._estimator.reset()
        self.last_action_scores = None

    def see_future(self, future: LinkFuture) -> None:
        """The link from this decision on; the simulator calls it before every ``act``."""
        self._future = future

    def plan_scores(self, obs: AbrObservation) -> tuple[np.ndarray, np.ndarray]:
        """(plans, QoE_lin of each plan) over the true future link."""
        future = self._future
        if future is None:
            raise RuntimeError("ClairvoyantMPC acts only where a simulator shows it the future (see_future)")
        horizon = min(self.horizon, obs.chunks_left)
        key = (obs.n_levels, horizon)
        if key not in self._plans:
            self._plans[key] = all_plans(*key)
        plans = self._plans[key]
        rates_mbps = np.asarray(obs.bitrates_bps, dtype=np.float64) / 1e6
        sizes = np.asarray(obs.future_chunk_bytes, dtype=np.float64)[np.arange(horizon), plans]
        n = plans.shape[0]
        estimate_bps = self._estimator.predict_throughput_bps(obs) if self.foresight < self.horizon else None
        clock_s = np.zeros(n)
        buffer_s = np.full(n, float(obs.buffer_s))
        rebuffer_s = np.zeros(n)
        for step in range(horizon):
            if step < self.foresight or estimate_bps is None:
                done_s = future.finish_s(clock_s, sizes[:, step])
            else:  # beyond its foresight the plan is walked at RobustMPC's robust estimate
                done_s = clock_s + sizes[:, step] * 8.0 / estimate_bps
            delay_s = done_s - clock_s + future.rtt_s
            rebuffer_s += np.maximum(delay_s - buffer_s, 0.0)
            buffer_s = np.maximum(buffer_s - delay_s, 0.0) + obs.chunk_duration_s
            wait_s = np.zeros(n)
            if obs.chunk_index + step + 1 < obs.chunks_total:
                over = np.maximum(buffer_s - future.buffer_cap_s, 0.0)
                wait_s = np.ceil(over / future.drain_step_s) * future.drain_step_s
            buffer_s -= wait_s
            clock_s = done_s + wait_s
        plan_mbps = rates_mbps[plans]
        switches = np.abs(plan_mbps[:, 0] - rates_mbps[obs.last_quality]) + np.abs(np.diff(plan_mbps, axis=1)).sum(1)
        scores = plan_mbps.sum(1) - self.rebuffer_penalty * rebuffer_s - self.smoothness_penalty * switches
        return plans, scores

    def action_scores(self, obs: AbrObservation) -> np.ndarray:
        """The value of each first quality: the best plan score among the plans that start with it."""
        plans, scores = self.plan_scores(obs)
        best = np.full(obs.n_levels, -np.inf)
        np.maximum.at(best, plans[:, 0], scores)
        return best

    def act(self, obs: AbrObservation) -> int:
        self.last_action_scores = self.action_scores(obs)
        return int(np.argmax(self.last_action_scores))

