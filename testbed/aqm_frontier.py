"""DualPI2's delay-utilisation frontier, and where another AQM policy's runs lie against it.

"Better than DualPI2" is not one number: a lower PI2 target buys lower classic queueing delay
with utilisation (a Cubic flow needs a standing queue to keep a long pipe full). Sweeping the
in-queue target traces DualPI2's trade-off on a traffic mix: points of (classic mean sojourn,
utilisation, L p99 sojourn). A policy lies *beyond* that frontier when it has lower classic
delay at equal utilisation, or higher utilisation at equal delay, with the L queue's p99 no
worse than DualPI2's at that utilisation.

The frontier is the Pareto set of the swept points (lowest delay, highest utilisation; a point
whose utilisation exceeds a lower-delay one's by no more than ``util_tol`` adds nothing),
joined by straight lines. A point P has two margins against it:

* ``delay_margin_ms``: the frontier's classic delay at P's utilisation minus P's, where P's
  utilisation lies in the swept range (within ``util_tol``);
* ``util_margin``: P's utilisation minus the frontier's at P's delay, where P's delay lies in
  the swept range (within the delay tolerance).

The frontier's delay rises with utilisation, so where both are defined they agree in sign. The
verdict: ``inside`` if a margin is negative past its tolerance, ``beyond`` if one is positive
past it and the L queue's p99 is within tolerance of the frontier's at P's utilisation, ``on``
otherwise (within tolerance, or better with a worse L p99), and ``outside`` where neither is
defined: lower delay *and* lower utilisation than every swept point, or higher both, which
extends the trade-off rather than beating it. ``score`` folds the placement into one number
for checkpoint selection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Utilisation differences below this (a share of capacity) count as equal.
UTIL_TOL = 0.002
#: Classic-delay differences below this relative share (and below DELAY_TOL_MS) count as equal.
DELAY_TOL_REL = 0.02
DELAY_TOL_MS = 0.1
#: The L queue's p99 may exceed the frontier's by this relative share plus this many ms.
L_P99_TOL_REL = 0.1
L_P99_TOL_MS = 0.1
#: In ``score``, this much utilisation below the frontier's lowest counts as much as doubling the delay.
SCORE_UTIL_UNIT = 0.05


@dataclass(frozen=True)
class AqmPoint:
    """One run (or a mean over seeds) on the delay-utilisation plane."""

    c_delay_ms: float  # mean sojourn of classic packets
    utilisation: float  # departed bits / capacity
    l_p99_ms: float  # 99th percentile sojourn of L packets
    label: str = ""

    @classmethod
    def from_summary(cls, summary: dict, label: str = "") -> AqmPoint:
        """The point of a run's ``summary.json``."""
        queues = summary["queues"]
        if not queues["C"]["count"]:
            raise ValueError(f"run {label or summary.get('scenario')}: no classic packets, no classic delay to place")
        l_p99 = queues["L"]["p99_ms"] if queues["L"]["count"] else 0.0
        return cls(float(queues["C"]["mean_ms"]), float(summary["utilisation"]), float(l_p99), label)


def mean_point(points: Sequence[AqmPoint], label: str = "") -> AqmPoint:
    """The mean of several runs (seeds) of one policy on one mix."""
    if not points:
        raise ValueError("mean_point needs at least one point")
    return AqmPoint(float(np.mean([p.c_delay_ms for p in points])), float(np.mean([p.utilisation for p in points])),
                    float(np.mean([p.l_p99_ms for p in points])), label or points[0].label)


@dataclass(frozen=True)
class Frontier:
    """The Pareto-optimal swept points, by increasing delay (and so increasing utilisation)."""

    points: tuple[AqmPoint, ...]
    util_tol: float = UTIL_TOL

    @classmethod
    def from_points(cls, points: Iterable[AqmPoint], util_tol: float = UTIL_TOL) -> Frontier:
        ordered = sorted(points, key=lambda p: (p.c_delay_ms, -p.utilisation))
        if not ordered:
            raise ValueError("a frontier needs at least one point")
        kept: list[AqmPoint] = []
        for p in ordered:
            if not kept or p.utilisation > kept[-1].utilisation + util_tol:
                kept.append(p)
        return cls(tuple(kept), util_tol)

    @property
    def delays(self) -> np.ndarray:
        return np.array([p.c_delay_ms for p in self.points])

    @property
    def utils(self) -> np.ndarray:
        return np.array([p.utilisation for p in self.points])

    @property
    def l_p99s(self) -> np.ndarray:
        return np.array([p.l_p99_ms for p in self.points])

    def delay_at(self, utilisation: float) -> float:
        """The frontier's classic delay at ``utilisation`` (clamped to the swept range)."""
        return float(np.interp(utilisation, self.utils, self.delays))

    def util_at(self, delay_ms: float) -> float:
        """The frontier's utilisation at classic delay ``delay_ms`` (clamped to the swept range)."""
        return float(np.interp(delay_ms, self.delays, self.utils))

    def l_p99_at(self, utilisation: float) -> float:
        """The frontier's L p99 at ``utilisation`` (clamped to the swept range)."""
        return float(np.interp(utilisation, self.utils, self.l_p99s))


@dataclass(frozen=True)
class Placement:
    """Where a point lies against a frontier (see the module docstring)."""

    verdict: str  # beyond | on | inside | outside
    delay_margin_ms: float | None
    util_margin: float | None
    l_p99_ms: float
    frontier_l_p99_ms: float
    l_p99_ok: bool
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def _delay_tol(delay_ms: float) -> float:
    return max(DELAY_TOL_MS, DELAY_TOL_REL * float(delay_ms))


def place(point: AqmPoint, frontier: Frontier) -> Placement:
    """The verdict and margins of ``point`` against ``frontier``."""
    tol_u = frontier.util_tol
    d, u = frontier.delays, frontier.utils
    dp, up = point.c_delay_ms, point.utilisation
    delay_margin = frontier.delay_at(up) - dp if u[0] - tol_u <= up <= u[-1] + tol_u else None
    util_margin = up - frontier.util_at(dp) if d[0] - _delay_tol(d[0]) <= dp <= d[-1] + _delay_tol(d[-1]) else None
    tol_d = _delay_tol(frontier.delay_at(up))
    frontier_l_p99 = frontier.l_p99_at(up)
    l_p99_ok = point.l_p99_ms <= frontier_l_p99 * (1 + L_P99_TOL_REL) + L_P99_TOL_MS
    worse = (delay_margin is not None and delay_margin < -tol_d) or (util_margin is not None and util_margin < -tol_u)
    better = (delay_margin is not None and delay_margin > tol_d) or (util_margin is not None and util_margin > tol_u)
    if delay_margin is None and util_margin is None:
        verdict = "outside"
    elif worse:
        verdict = "inside"
    elif better and l_p99_ok:
        verdict = "beyond"
    else:
        verdict = "on"
    return Placement(verdict, delay_margin, util_margin, point.l_p99_ms, frontier_l_p99, bool(l_p99_ok),
                     score(point, frontier))


def score(point: AqmPoint, frontier: Frontier) -> float:
    """One number, higher better, positive beyond the frontier: the relative classic-delay saving at
    equal utilisation, or (below the frontier's lowest utilisation) minus the shortfall in units of
    ``SCORE_UTIL_UNIT``; less the relative excess of L p99 over the frontier's."""
    u_lo, u_hi = frontier.utils[0], frontier.utils[-1]
    if point.utilisation >= u_lo - frontier.util_tol:
        reference = frontier.delay_at(min(point.utilisation, u_hi))
        value = (reference - point.c_delay_ms) / max(reference, DELAY_TOL_MS)
    else:
        value = -(u_lo - point.utilisation) / SCORE_UTIL_UNIT
    ref_l_p99 = frontier.l_p99_at(min(max(point.utilisation, u_lo), u_hi))
    excess = max(0.0, point.l_p99_ms - ref_l_p99 * (1 + L_P99_TOL_REL) - L_P99_TOL_MS)
    return float(value - excess / max(ref_l_p99, L_P99_TOL_MS))
