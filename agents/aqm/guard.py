"""An idle-link guard for learned AQM policies: stop signalling congestion the link does not have.

A policy that has pushed p' high (a slow-start burst, a mix unlike its training mixes) can stay
there: its history says "p' was high", imitation learned to repeat the action in force, and the
flows, marked on every micro-burst, never build the queue that would tell it otherwise. PI2 would
unwind such a p' by ``alpha * target`` per update, which from p' = 0.09 takes most of a minute.
The guard keeps the learned p' unless the queue is empty (head sojourn below ``empty_s``) while
the link is under-used (utilisation below ``utilisation``); then the p' applied is at most one
step of the action grid below the p' in force, so an idle link's p' falls geometrically (about
half per update) until traffic refills it. It only ever lowers p', and only when there is no
queue for marks to protect.
"""

from __future__ import annotations

import numpy as np

from agents.protocol.control_points import AqmObservation


class IdleGuard:
    """Lowers a learned p' one grid step per tick while the queue is empty and the link under-used."""

    def __init__(self, grid: np.ndarray, utilisation: float = 0.9, empty_s: float = 0.001) -> None:
        if not 0.0 < utilisation <= 1.0:
            raise ValueError(f"idle guard utilisation must be in (0, 1], got {utilisation}")
        if not empty_s > 0.0:
            raise ValueError(f"idle guard empty_s must be > 0 s, got {empty_s}")
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
            raise ValueError("idle guard needs an increasing p' grid of at least 2 values")
        self.grid = grid
        self.utilisation = float(utilisation)
        self.empty_s = float(empty_s)
        #: answers lowered this episode
        self.lowered = 0

    def reset(self) -> None:
        self.lowered = 0

    def idle(self, obs: AqmObservation) -> bool:
        """No queue to protect, and capacity unused: marks now only hold flows back."""
        return obs.qdelay_s < self.empty_s and obs.utilisation < self.utilisation

    def limit(self, obs: AqmObservation, p_prime: float) -> float:
        """``p_prime``, or the grid value one step below the p' in force when the link is idle and it is higher."""
        if not self.idle(obs):
            return p_prime
        below = self.grid[self.grid < obs.p_prime * (1.0 - 1e-9)]  # the p' in force is itself a grid value
        ceiling = float(below[-1]) if below.size else 0.0
        if p_prime <= ceiling:
            return p_prime
        self.lowered += 1
        return ceiling
