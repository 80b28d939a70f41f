"""Classic controllers of the DualPI2 base probability p' (the ``aqm`` control point).

Each answers an :class:`agents.protocol.control_points.AqmObservation` with the
p' the queue should apply until the next tick: PI2 (the DualPI2 default, for
parity runs), PIE (RFC 8033, mapped onto p') and a fixed probability.
"""

from agents.aqm.fixed import FixedProbability
from agents.aqm.pi2 import Pi2Controller
from agents.aqm.pie import PieController

__all__ = ["FixedProbability", "Pi2Controller", "PieController"]
