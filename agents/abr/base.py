"""The ABR policy contract and the throughput estimators the classic policies share.

A policy sees one :class:`AbrObservation` per chunk boundary and answers the
quality index of the next chunk. The same object serves the packet-level
client (over the wire) and the chunk-level simulator, so it must not assume
which one is driving it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from agents.protocol.control_points import AbrObservation


@runtime_checkable
class AbrPolicy(Protocol):
    """What every ABR policy offers.

    ``reset`` is called before each session (video). Policies that learn
    online may also define ``observe_reward(reward: float) -> None``; drivers
    call it, when present, with the QoE_lin of each downloaded chunk before the
    next ``act``.
    """

    name: str
    control: str

    def reset(self) -> None: ...

    def act(self, obs: AbrObservation) -> int: ...


def recent_throughputs_bps(obs: AbrObservation, window: int) -> np.ndarray:
    """The last ``window`` measured chunk throughputs, oldest first, without the zero padding."""
    history = np.asarray(obs.throughput_bps, dtype=np.float64)
    measured = history[history > 0]
    return measured[-window:]


def harmonic_mean(values: np.ndarray) -> float:
    """Harmonic mean, the estimator that lets one slow chunk pull the estimate down (as rebuffering would)."""
    if values.size == 0 or np.any(values <= 0):
        raise ValueError("harmonic mean needs at least one positive value")
    return float(values.size / np.sum(1.0 / values))


def highest_level_at_most(bitrates_bps: np.ndarray, rate_bps: float) -> int:
    """Index of the highest bitrate not above ``rate_bps``; the lowest level when none fits."""
    fitting = np.flatnonzero(np.asarray(bitrates_bps) <= rate_bps)
    return int(fitting[-1]) if fitting.size else 0


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
