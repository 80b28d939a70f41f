"""PIE (RFC 8033) as a controller of DualPI2's base probability p'.

PIE computes a classic drop probability p. DualPI2 applies ``p_C = p'^2`` to
classic traffic and couples ``p_CL = k p'`` to L4S traffic, so answering
``p' = sqrt(p)`` makes classic packets see exactly PIE's p, while L4S flows
get the coupled signal that keeps them in balance with the classic ones.
Returning p itself as p' would square it: classic flows would see p^2, far less
than PIE intends.

Only the probability update of RFC 8033 (section 4.2, with its auto-tuning of
the gains and its cap on large increases) lives here. Per-packet parts (the
burst allowance, skipping drops while the queue is short) belong to the queue.
The gains assume one update per T_UPDATE = 15 ms, the RFC's default: the
control point should tick at that interval.
"""

from __future__ import annotations

import math

from agents.protocol.control_points import AqmObservation

#: RFC 8033's auto-tuning: while p is small, each update's change is divided by this much,
#: so the controller is gentle near zero and full-strength from p >= 10 % on.
AUTO_TUNE_DIVISORS = ((1e-6, 2048.0), (1e-5, 512.0), (1e-4, 128.0), (1e-3, 32.0), (1e-2, 8.0), (1e-1, 2.0))
#: Above this p an update may raise p by at most MAX_INCREASE (RFC 8033's "cap drop adjustment").
CAP_ABOVE_P = 0.1
MAX_INCREASE = 0.02
#: Decay factor per update while both delay samples are under half the target (congestion gone).
DECAY = 0.98


class PieController:
    """RFC 8033 PIE drop probability, answered as p' = sqrt(p)."""

    control = "aqm"

    def __init__(self, target_s: float = 0.015, alpha_hz: float = 0.125, beta_hz: float = 1.25):
        if target_s <= 0:
            raise ValueError(f"target_s must be > 0, got {target_s}")
        if alpha_hz < 0 or beta_hz < 0:
            raise ValueError(f"alpha_hz and beta_hz must be >= 0, got {alpha_hz}, {beta_hz}")
        self.name = "pie"
        self.target_s = float(target_s)
        self.alpha_hz = float(alpha_hz)
        self.beta_hz = float(beta_hz)
        self.drop_prob = 0.0
        self.qdelay_old_s = 0.0

    def reset(self) -> None:
        self.drop_prob = 0.0
        self.qdelay_old_s = 0.0

    def act(self, obs: AqmObservation) -> float:
        qdelay_s = obs.qdelay_s
        p = self.alpha_hz * (qdelay_s - self.target_s) + self.beta_hz * (qdelay_s - self.qdelay_old_s)
        for below, divisor in AUTO_TUNE_DIVISORS:
            if self.drop_prob < below:
                p /= divisor
                break
        if self.drop_prob >= CAP_ABOVE_P and p > MAX_INCREASE:
            p = MAX_INCREASE
        drop_prob = self.drop_prob + p
        if qdelay_s < self.target_s / 2 and self.qdelay_old_s < self.target_s / 2:
            drop_prob *= DECAY
        self.drop_prob = min(max(drop_prob, 0.0), 1.0)
        self.qdelay_old_s = qdelay_s
        return math.sqrt(self.drop_prob)
