"""A constant p': the open-loop baseline (and the cheapest policy for wire benchmarks)."""

from __future__ import annotations

import math

from agents.protocol.control_points import AqmObservation


class FixedProbability:
    """Always answers the same base probability p'."""

    control = "aqm"

    def __init__(self, p_prime: float = 0.0):
        p_prime = float(p_prime)
        if not (math.isfinite(p_prime) and 0.0 <= p_prime <= 1.0):
            raise ValueError(f"p_prime must be in [0, 1], got {p_prime}")
        self.name = "fixed"
        self.p_prime = p_prime

    def reset(self) -> None:
        """Stateless: nothing to reset."""

    def act(self, obs: AqmObservation) -> float:
        return self.p_prime
