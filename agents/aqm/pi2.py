"""The PI2 update of DualPI2's base probability p', computed as the C++ queue does.

Parity matters: a run where this controller answers the ``aqm`` control point
must match a run with the queue's built-in PI2 bit for bit, so the arithmetic
below is float64 in the queue's exact order (RFC 9332 section 2.5.2 /
Linux ``sch_dualpi2``): ``alpha`` and ``beta`` already include the update
interval, so there is no ``* tupdate`` here.
"""

from __future__ import annotations

from agents.protocol.control_points import AqmObservation


class Pi2Controller:
    """PI2: p' += alpha (qdelay - target) + beta (qdelay - qdelay_prev), clamped to [0, 1]."""

    control = "aqm"

    def __init__(
        self,
        target_s: float = 0.015,
        alpha_hz: float = 0.16,
        beta_hz: float = 3.2,
        coupling_k: float = 2.0,
        drop_on_overload: bool = True,
    ):
        if target_s < 0:
            raise ValueError(f"target_s must be >= 0, got {target_s}")
        if alpha_hz < 0 or beta_hz < 0:
            raise ValueError(f"alpha_hz and beta_hz must be >= 0, got {alpha_hz}, {beta_hz}")
        if coupling_k <= 0:
            raise ValueError(f"coupling_k must be > 0, got {coupling_k}")
        self.name = "pi2"
        self.target_s = float(target_s)
        self.alpha_hz = float(alpha_hz)
        self.beta_hz = float(beta_hz)
        self.coupling_k = float(coupling_k)
        self.drop_on_overload = bool(drop_on_overload)
        self.p_prime = 0.0
        self.qdelay_prev_s = 0.0

    def reset(self) -> None:
        self.p_prime = 0.0
        self.qdelay_prev_s = 0.0

    def act(self, obs: AqmObservation) -> float:
        qdelay_s = obs.qdelay_s
        delta = self.alpha_hz * (qdelay_s - self.target_s) + self.beta_hz * (qdelay_s - self.qdelay_prev_s)
        p = self.p_prime + delta
        p = min(max(p, 0.0), 1.0)
        if not self.drop_on_overload:
            # Without overload dropping, L marking k p' saturates at 1: keep p' where it still means something.
            p = min(p, 1.0 / self.coupling_k)
        self.qdelay_prev_s = qdelay_s
        self.p_prime = p
        return p
