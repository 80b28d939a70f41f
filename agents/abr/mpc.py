"""RobustMPC (Yin et al., SIGCOMM 2015), as Pensieve's baseline implements it.

Each decision scores every plan of qualities for the next ``horizon`` chunks
by QoE_lin, simulating the buffer over the plan with the real chunk sizes and
a throughput prediction discounted by recent prediction errors, and applies
the first step of the best plan. All ``levels ** horizon`` plans are scored at
once as numpy arrays (7776 plans x 5 steps for the standard ladder), which
keeps a decision well under a millisecond.

Ties are broken deterministically: plans whose score is within
:data:`TIE_TOLERANCE` (relative) of the best are equal, and the first of them
in :func:`all_plans` (lexicographic) order wins: the lowest quality for the
next chunk, then the lowest after it. (An ``argmax`` over float sums lets
rounding pick among equal plans, which moved mean QoE on a 310-trace set by
0.03.)

``published=True`` runs RobustMPC as Pensieve's and NetLLM's code does, to
compare with numbers from those papers: it plans the qualities of chunks
k..k+4 with the sizes of chunks k+1..k+5 (an off-by-one), and its plan loop's
``>=`` gives a tie to the last plan in that order (the highest qualities).
"""

from __future__ import annotations

import numpy as np

from agents.abr.base import check_positive_int, harmonic_mean, recent_throughputs_bps
from agents.protocol.control_points import ABR_HORIZON, AbrObservation
from agents.protocol.qoe import QOE_LIN_REBUFFER_PENALTY, SMOOTHNESS_PENALTY

#: Relative score difference below which two plans tie (float sums of equal plans differ in the last bits).
TIE_TOLERANCE = 1e-9


def all_plans(n_levels: int, horizon: int) -> np.ndarray:
    """Every quality sequence of length ``horizon`` in lexicographic order: int array ``[n_levels ** horizon,
    horizon]``, row 0 all lowest quality."""
    grids = np.indices((n_levels,) * horizon)
    return grids.reshape(horizon, -1).T.copy()


def best_plan_index(scores: np.ndarray, last: bool = False) -> int:
    """Index of the best plan; ties (within :data:`TIE_TOLERANCE`) go to the first in :func:`all_plans` order,
    or to the last with ``last`` (Pensieve's ``>=``)."""
    best = float(np.max(scores))
    tied = np.flatnonzero(scores >= best - TIE_TOLERANCE * max(1.0, abs(best)))
    return int(tied[-1] if last else tied[0])


class RobustMPC:
    """Model-predictive ABR with the RobustMPC throughput discount.

    Prediction: harmonic mean of the last ``window`` chunk throughputs divided
    by ``1 + max relative error`` of the last ``window`` predictions (an error
    is ``|predicted - measured| / measured`` for the chunk the prediction was
    made for). Like Pensieve's version it ignores the RTT and the buffer cap
    inside the plan; the measured throughputs it feeds on already include the
    request RTT, which makes it a little conservative. Near the end of the
    video the horizon shrinks to the chunks left. Before any throughput has
    been measured it keeps ``obs.last_quality``.

    ``published`` selects the variant of the module docstring. An observation
    carries the sizes of chunks k..k+4, so the published variant looks 4
    chunks ahead unless ``chunk_bytes`` (the whole video, ``[levels,
    chunks]``, as the chunk-level simulator has it) gives the sizes of any
    chunk; past the video's last chunk it uses that chunk's sizes.
    """

    name = "mpc"
    control = "abr"

    def __init__(
        self,
        horizon: int = ABR_HORIZON,
        window: int = 5,
        rebuffer_penalty: float = QOE_LIN_REBUFFER_PENALTY,
        smoothness_penalty: float = SMOOTHNESS_PENALTY,
        published: bool = False,
        chunk_bytes: np.ndarray | None = None,
    ) -> None:
        self.horizon = check_positive_int("horizon", horizon)
        self.published = bool(published)
        #: the chunk whose sizes plan step 0 uses, relative to the chunk being chosen
        self.chunk_offset = 1 if self.published else 0
        self.chunk_bytes = None if chunk_bytes is None else np.asarray(chunk_bytes, dtype=np.float64)
        if self.chunk_bytes is not None and self.chunk_bytes.ndim != 2:
            raise ValueError(f"chunk_bytes must be [levels, chunks], got shape {self.chunk_bytes.shape}")
        if self.horizon > ABR_HORIZON:
            raise ValueError(
                f"horizon must be <= {ABR_HORIZON} (the chunk sizes an observation carries), got {horizon}"
            )
        self.window = check_positive_int("window", window)
        if not (rebuffer_penalty >= 0 and smoothness_penalty >= 0):
            raise ValueError(
                f"penalties must be >= 0, got rebuffer {rebuffer_penalty}, smoothness {smoothness_penalty}"
            )
        self.rebuffer_penalty = float(rebuffer_penalty)
        self.smoothness_penalty = float(smoothness_penalty)
        self._plans: dict[tuple[int, int], np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the prediction errors of the previous session."""
        self._errors: list[float] = []
        self._last_prediction_bps: float | None = None
        self._last_chunk_index = -1

    def predict_throughput_bps(self, obs: AbrObservation) -> float | None:
        """The robust throughput prediction for the next chunk (None before any measurement).

        Records the error of the previous prediction once per new chunk, so
        asking twice about the same observation (a shadow run) changes nothing.
        """
        samples = recent_throughputs_bps(obs, self.window)
        if samples.size == 0:
            return None
        predicted_bps = harmonic_mean(samples)
        if obs.chunk_index > self._last_chunk_index:
            if self._last_prediction_bps is not None:
                measured_bps = samples[-1]
                self._errors.append(abs(self._last_prediction_bps - measured_bps) / measured_bps)
            self._last_prediction_bps = predicted_bps
            self._last_chunk_index = obs.chunk_index
        max_error = max(self._errors[-self.window :], default=0.0)
        return predicted_bps / (1.0 + max_error)

    def plan_scores(self, obs: AbrObservation, throughput_bps: float) -> tuple[np.ndarray, np.ndarray]:
        """(plans, QoE_lin of each plan) for the chunks ahead at the given throughput."""
        horizon = min(self.horizon, obs.chunks_left)
        if horizon < 1:
            raise ValueError(f"no chunk left to choose for: chunk_index {obs.chunk_index} of {obs.chunks_total}")
        if self.chunk_bytes is None:
            horizon = min(horizon, ABR_HORIZON - self.chunk_offset)
        plans = self._plans_for(obs.n_levels, horizon)
        rates_mbps = np.asarray(obs.bitrates_bps, dtype=np.float64) / 1e6
        sizes_bytes = self._plan_sizes(obs, horizon)
        download_s = sizes_bytes[np.arange(horizon), plans] * 8.0 / throughput_bps

        buffer_s = np.full(plans.shape[0], float(obs.buffer_s))
        rebuffer_s = np.zeros(plans.shape[0])
        for step in range(horizon):
            rebuffer_s += np.maximum(download_s[:, step] - buffer_s, 0.0)
            buffer_s = np.maximum(buffer_s - download_s[:, step], 0.0) + obs.chunk_duration_s

        plan_mbps = rates_mbps[plans]
        switches_mbps = np.abs(plan_mbps[:, 0] - rates_mbps[obs.last_quality])
        switches_mbps += np.abs(np.diff(plan_mbps, axis=1)).sum(axis=1)
        scores = plan_mbps.sum(axis=1) - self.rebuffer_penalty * rebuffer_s - self.smoothness_penalty * switches_mbps
        return plans, scores

    def _plan_sizes(self, obs: AbrObservation, horizon: int) -> np.ndarray:
        """Chunk sizes ``[step, level]`` the plan steps use: chunk k + offset + step, and past the video's last
        chunk that chunk's sizes (Pensieve's video1 files hold one size line more than the video plays)."""
        first = self.chunk_offset
        if self.chunk_bytes is None:
            rows = np.minimum(first + np.arange(horizon), obs.chunks_left - 1)
            return np.asarray(obs.future_chunk_bytes, dtype=np.float64)[rows]
        table = self.chunk_bytes
        if table.shape[0] != obs.n_levels:
            raise ValueError(f"chunk_bytes has {table.shape[0]} levels, the observation {obs.n_levels}")
        index = np.minimum(obs.chunk_index + first + np.arange(horizon), table.shape[1] - 1)
        return table[:, index].T

    def act(self, obs: AbrObservation) -> int:
        throughput_bps = self.predict_throughput_bps(obs)
        if throughput_bps is None:
            return obs.last_quality
        plans, scores = self.plan_scores(obs, throughput_bps)
        return int(plans[best_plan_index(scores, last=self.published), 0])

    def _plans_for(self, n_levels: int, horizon: int) -> np.ndarray:
        key = (n_levels, horizon)
        if key not in self._plans:
            self._plans[key] = all_plans(n_levels, horizon)
        return self._plans[key]
