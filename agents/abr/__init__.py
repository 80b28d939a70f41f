"""Classic ABR policies and the QoE they are judged by.

Pure Python + numpy: every policy answers an
:class:`agents.protocol.control_points.AbrObservation` with a quality index,
whether the packet-level client or the chunk-level simulator asks.
"""

from agents.abr.base import AbrPolicy
from agents.abr.bba import BBA
from agents.abr.bola import BolaE
from agents.abr.mpc import RobustMPC
from agents.abr.oracle import ClairvoyantMPC, LinkFuture
from agents.abr.rate import RateBased

__all__ = ["AbrPolicy", "BBA", "BolaE", "ClairvoyantMPC", "LinkFuture", "RateBased", "RobustMPC"]
