"""A stall guard for learned ABR policies: lower a choice whose chunk would not arrive in time.

A policy imitating a clairvoyant planner learns the planner's optimism: it picks
the quality the future would have allowed, and on a link that collapses without
warning (3G traces) it stalls where RobustMPC, planning on a pessimistic
estimate, does not. The guard keeps the learned choice unless the next chunk,
downloaded at RobustMPC's robust throughput estimate (harmonic mean of the last
chunks over one plus the largest recent prediction error), would take longer
than the buffer holds less ``margin_s``; then it takes the highest quality below
the choice that would arrive in time, or the lowest. It only ever lowers a
choice, and never before the first throughput is measured.
"""

from __future__ import annotations

import numpy as np

from agents.abr.mpc import RobustMPC
from agents.protocol.control_points import AbrObservation


class StallGuard:
    """Per-session state: the robust estimator's recent prediction errors."""

    def __init__(self, margin_s: float = 1.0, window: int = 5) -> None:
        if not margin_s >= 0:
            raise ValueError(f"stall guard margin must be >= 0 s, got {margin_s}")
        self.margin_s = float(margin_s)
        self._estimator = RobustMPC(window=window)
        #: choices lowered this session
        self.lowered = 0

    def reset(self) -> None:
        self._estimator.reset()
        self.lowered = 0

    def limit(self, obs: AbrObservation, quality: int) -> int:
        """``quality``, or a lower one whose chunk arrives before the buffer runs dry.

        Call it on every decision of a session, in order: the estimate learns from each chunk's error.
        """
        throughput_bps = self._estimator.predict_throughput_bps(obs)
        if throughput_bps is None:
            return quality
        download_s = np.asarray(obs.next_chunk_bytes, dtype=np.float64) * 8.0 / throughput_bps
        in_time = download_s <= obs.buffer_s - self.margin_s
        if quality == 0 or in_time[quality]:
            return quality
        self.lowered += 1
        lower = np.flatnonzero(in_time[:quality])
        return int(lower[-1]) if lower.size else 0
