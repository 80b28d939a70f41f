"""Quality of experience of a video session, as the ABR literature scores it.

It lives with the wire contract because QoE_lin of a chunk is the ABR control
point's reward: the simulation (which computes it) and the agents (whose MPC
optimises it) must agree on one definition.

QoE_lin (Pensieve, MPC) per chunk, in Mbps-equivalent units::

    bitrate_Mbps - 4.3 * rebuffer_s - |bitrate_Mbps - previous_bitrate_Mbps|

QoE_log replaces the bitrate by ``log(b / b_min)`` and uses a rebuffer
penalty of 2.66. The first chunk's rebuffer is the startup delay; the usual
headline number is the mean over chunks *excluding* the first, so startup is
reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

QOE_LIN_REBUFFER_PENALTY = 4.3
QOE_LOG_REBUFFER_PENALTY = 2.66
SMOOTHNESS_PENALTY = 1.0


class QoeTerms(NamedTuple):
    """The three per-chunk terms; QoE = bitrate - rebuffer_penalty - smoothness_penalty."""

    bitrate: np.ndarray
    rebuffer_penalty: np.ndarray
    smoothness_penalty: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.bitrate - self.rebuffer_penalty - self.smoothness_penalty


def _session_arrays(
    bitrates_bps: np.ndarray | list[float], rebuffer_s: np.ndarray | list[float]
) -> tuple[np.ndarray, np.ndarray]:
    rates = np.atleast_1d(np.asarray(bitrates_bps, dtype=np.float64))
    stalls = np.atleast_1d(np.asarray(rebuffer_s, dtype=np.float64))
    if rates.ndim != 1 or rates.shape != stalls.shape or rates.size == 0:
        raise ValueError(
            f"bitrates_bps and rebuffer_s must be 1-D, non-empty and of equal length, got {rates.shape}, {stalls.shape}"
        )
    if np.any(rates <= 0) or np.any(stalls < 0):
        raise ValueError("bitrates must be > 0 and rebuffer times >= 0")
    return rates, stalls


def _previous(values: np.ndarray, before_first: float | None) -> np.ndarray:
    """The per-chunk previous value; the first chunk compares with ``before_first`` (itself when None)."""
    first = values[0] if before_first is None else before_first
    return np.concatenate([[first], values[:-1]])


def qoe_lin_terms(
    bitrates_bps: np.ndarray | list[float],
    rebuffer_s: np.ndarray | list[float],
    prev_bitrate_bps: float | None = None,
    rebuffer_penalty: float = QOE_LIN_REBUFFER_PENALTY,
    smoothness_penalty: float = SMOOTHNESS_PENALTY,
) -> QoeTerms:
    """Per-chunk QoE_lin terms of a session's chunks in order.

    ``prev_bitrate_bps`` is the bitrate before the first chunk (the start
    quality's); None means the first chunk pays no smoothness penalty.
    """
    rates, stalls = _session_arrays(bitrates_bps, rebuffer_s)
    mbps = rates / 1e6
    prev_mbps = _previous(mbps, None if prev_bitrate_bps is None else prev_bitrate_bps / 1e6)
    return QoeTerms(mbps, rebuffer_penalty * stalls, smoothness_penalty * np.abs(mbps - prev_mbps))


def qoe_lin(
    bitrates_bps: np.ndarray | list[float],
    rebuffer_s: np.ndarray | list[float],
    prev_bitrate_bps: float | None = None,
    rebuffer_penalty: float = QOE_LIN_REBUFFER_PENALTY,
) -> np.ndarray:
    """Per-chunk QoE_lin (see :func:`qoe_lin_terms`)."""
    return qoe_lin_terms(bitrates_bps, rebuffer_s, prev_bitrate_bps, rebuffer_penalty).total


def qoe_log(
    bitrates_bps: np.ndarray | list[float],
    rebuffer_s: np.ndarray | list[float],
    min_bitrate_bps: float,
    prev_bitrate_bps: float | None = None,
    rebuffer_penalty: float = QOE_LOG_REBUFFER_PENALTY,
) -> np.ndarray:
    """Per-chunk QoE_log: utility ``log(b / b_min)`` of the ladder's lowest bitrate ``min_bitrate_bps``."""
    rates, stalls = _session_arrays(bitrates_bps, rebuffer_s)
    if not 0 < min_bitrate_bps <= rates.min():
        raise ValueError(f"min_bitrate_bps must be in (0, lowest chunk bitrate], got {min_bitrate_bps}")
    utility = np.log(rates / min_bitrate_bps)
    prev_utility = _previous(utility, None if prev_bitrate_bps is None else np.log(prev_bitrate_bps / min_bitrate_bps))
    return utility - rebuffer_penalty * stalls - np.abs(utility - prev_utility)


@dataclass(frozen=True)
class QoeSummary:
    """Headline numbers of one session.

    ``startup_delay_s`` is the first chunk's stall; ``rebuffer_s``,
    ``rebuffer_count`` and ``rebuffer_ratio`` count only stalls after it, the
    ratio over (played video + those stalls).
    """

    chunks: int
    qoe_lin_mean: float
    qoe_lin_mean_after_first: float  # the usual headline; NaN for a one-chunk session
    avg_bitrate_bps: float
    rebuffer_s: float
    rebuffer_count: int
    rebuffer_ratio: float
    switches: int
    startup_delay_s: float

    @classmethod
    def from_chunks(
        cls,
        bitrates_bps: np.ndarray | list[float],
        rebuffer_s: np.ndarray | list[float],
        chunk_duration_s: float,
        prev_bitrate_bps: float | None = None,
    ) -> QoeSummary:
        """Summarise a session from its chunks' bitrates and stalls, in download order."""
        rates, stalls = _session_arrays(bitrates_bps, rebuffer_s)
        if not chunk_duration_s > 0:
            raise ValueError(f"chunk_duration_s must be > 0, got {chunk_duration_s}")
        qoe = qoe_lin(rates, stalls, prev_bitrate_bps)
        later_stalls = stalls[1:]
        stall_s = float(later_stalls.sum())
        return cls(
            chunks=int(rates.size),
            qoe_lin_mean=float(qoe.mean()),
            qoe_lin_mean_after_first=float(qoe[1:].mean()) if rates.size > 1 else float("nan"),
            avg_bitrate_bps=float(rates.mean()),
            rebuffer_s=stall_s,
            rebuffer_count=int(np.count_nonzero(later_stalls > 0)),
            rebuffer_ratio=stall_s / (rates.size * chunk_duration_s + stall_s),
            switches=int(np.count_nonzero(np.diff(rates))),
            startup_delay_s=float(stalls[0]),
        )
