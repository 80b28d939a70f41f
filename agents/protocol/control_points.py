"""Observation and action layouts of the testbed's control points.

This module is the contract between the simulation process (which fills the
vectors) and agent processes (which read them). Both sides import it; nothing
here touches ns-3 or zmq. Every observation is a flat float64 Box on the wire
(so existing ns3-gym agents can consume it), and every entry has a stable name
(``field_names()``) that lands in ``decisions.parquet`` metadata, so offline
tools (the LLM experience pool) read features by name rather than by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

#: Length of the per-chunk history an ABR observation carries (Pensieve uses 8).
ABR_HISTORY = 8
#: Number of future chunks whose sizes an ABR observation carries (RobustMPC horizon).
ABR_HORIZON = 5


@dataclass
class AqmObservation:
    """State of a DualPI2 bottleneck at one control tick.

    Rates and counts cover the interval since the previous tick; sojourns are
    those of the head packet at the tick, which is what the PI2 update reads.
    """

    qdelay_s: float  # max(C head sojourn, L head sojourn): the PI2 input
    c_sojourn_s: float
    l_sojourn_s: float
    c_len_pkts: float
    l_len_pkts: float
    c_len_bytes: float
    l_len_bytes: float
    c_arrival_bps: float
    l_arrival_bps: float
    departure_bps: float
    utilisation: float  # departure_bps / bottleneck rate, in [0, ~1]
    c_drops: float  # AQM drops of classic packets in the interval
    c_marks: float  # CE marks of classic (ECT(0)) packets in the interval
    l_marks: float  # CE marks (coupled + step) of L packets in the interval
    l_drops: float  # L drops (overload, step on Not-ECT) in the interval
    tail_drops: float  # limit overflow drops in the interval
    p_prime: float  # the base probability p' in force during the interval
    interval_s: float  # length of the interval these rates cover

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in self.field_names()], dtype=np.float64)

    @classmethod
    def from_vector(cls, vec: np.ndarray | list[float]) -> AqmObservation:
        values = np.asarray(vec, dtype=np.float64).ravel()
        names = cls.field_names()
        if values.size != len(names):
            raise ValueError(f"AQM observation needs {len(names)} values, got {values.size}")
        return cls(**{n: float(v) for n, v in zip(names, values, strict=True)})


@dataclass
class AbrObservation:
    """What a video client knows when it must choose the next chunk's quality.

    Histories are oldest-first with the most recent chunk last, zero-padded at
    the front before enough chunks exist. ``future_chunk_bytes[h, q]`` is the
    size of chunk ``chunk_index + h`` at quality ``q`` (zero past the end).
    """

    chunk_index: int  # index of the chunk about to be requested
    chunks_total: int
    last_quality: int  # quality of the previous chunk (the start quality before any)
    buffer_s: float
    rebuffer_s: float  # stall time accumulated while fetching the previous chunk
    chunk_duration_s: float
    throughput_bps: np.ndarray = field(default_factory=lambda: np.zeros(ABR_HISTORY))
    download_time_s: np.ndarray = field(default_factory=lambda: np.zeros(ABR_HISTORY))
    bitrates_bps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    future_chunk_bytes: np.ndarray = field(default_factory=lambda: np.zeros((ABR_HORIZON, 0)))

    SCALARS = ("chunk_index", "chunks_total", "last_quality", "buffer_s", "rebuffer_s", "chunk_duration_s")

    @property
    def n_levels(self) -> int:
        return int(np.asarray(self.bitrates_bps).size)

    @property
    def chunks_left(self) -> int:
        return self.chunks_total - self.chunk_index

    @property
    def next_chunk_bytes(self) -> np.ndarray:
        return np.asarray(self.future_chunk_bytes)[0]

    @staticmethod
    def vector_size(n_levels: int) -> int:
        return len(AbrObservation.SCALARS) + 2 * ABR_HISTORY + n_levels + ABR_HORIZON * n_levels

    @staticmethod
    def field_names(n_levels: int) -> list[str]:
        names = list(AbrObservation.SCALARS)
        names += [f"throughput_bps.{i}" for i in range(ABR_HISTORY)]
        names += [f"download_time_s.{i}" for i in range(ABR_HISTORY)]
        names += [f"bitrates_bps.{q}" for q in range(n_levels)]
        names += [f"future_chunk_bytes.{h}.{q}" for h in range(ABR_HORIZON) for q in range(n_levels)]
        return names

    def to_vector(self) -> np.ndarray:
        scalars = [float(getattr(self, n)) for n in self.SCALARS]
        parts = [
            np.asarray(scalars, dtype=np.float64),
            np.asarray(self.throughput_bps, dtype=np.float64).reshape(ABR_HISTORY),
            np.asarray(self.download_time_s, dtype=np.float64).reshape(ABR_HISTORY),
            np.asarray(self.bitrates_bps, dtype=np.float64).ravel(),
            np.asarray(self.future_chunk_bytes, dtype=np.float64).reshape(ABR_HORIZON, self.n_levels).ravel(),
        ]
        return np.concatenate(parts)

    @classmethod
    def from_vector(cls, vec: np.ndarray | list[float]) -> AbrObservation:
        values = np.asarray(vec, dtype=np.float64).ravel()
        rest = values.size - len(cls.SCALARS) - 2 * ABR_HISTORY
        if rest <= 0 or rest % (1 + ABR_HORIZON):
            raise ValueError(f"ABR observation of {values.size} values does not fit the layout")
        n_levels = rest // (1 + ABR_HORIZON)
        i = len(cls.SCALARS)
        s = values[:i]
        thr = values[i : i + ABR_HISTORY]
        i += ABR_HISTORY
        dl = values[i : i + ABR_HISTORY]
        i += ABR_HISTORY
        rates = values[i : i + n_levels]
        i += n_levels
        future = values[i:].reshape(ABR_HORIZON, n_levels)
        return cls(
            chunk_index=int(s[0]),
            chunks_total=int(s[1]),
            last_quality=int(s[2]),
            buffer_s=float(s[3]),
            rebuffer_s=float(s[4]),
            chunk_duration_s=float(s[5]),
            throughput_bps=thr.copy(),
            download_time_s=dl.copy(),
            bitrates_bps=rates.copy(),
            future_chunk_bytes=future.copy(),
        )


def aqm_action_grid(n_actions: int = 17, p_min: float = 1e-4) -> np.ndarray:
    """The p' values of the discrete AQM action space.

    Index 0 is p' = 0 (no AQM signal); indices 1..n-1 are log-spaced from
    ``p_min`` to 1. With the defaults the grid is 0 and 1e-4 .. 1 in steps of
    4/15 of a decade, fine enough near PI2's usual operating range (p' of
    0.01-0.3) and coarse where a controller rarely goes.
    """
    if n_actions < 2:
        raise ValueError(f"n_actions must be >= 2, got {n_actions}")
    if not 0.0 < p_min < 1.0:
        raise ValueError(f"p_min must be in (0, 1), got {p_min}")
    return np.concatenate([[0.0], np.logspace(np.log10(p_min), 0.0, n_actions - 1)])
