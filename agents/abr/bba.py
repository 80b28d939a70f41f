"""BBA, the buffer-based ABR (Huang et al., SIGCOMM 2014), as Pensieve's baseline implements it."""

from __future__ import annotations

from agents.protocol.control_points import AbrObservation


class BBA:
    """Quality from the buffer alone.

    Lowest quality below the reservoir, top quality at reservoir + cushion and
    above, and in between the level ``floor((levels - 1) * (buffer -
    reservoir) / cushion)``. Needs no throughput estimate, hence robust at
    startup and blind to the link.
    """

    name = "bba"
    control = "abr"

    def __init__(self, reservoir_s: float = 5.0, cushion_s: float = 10.0) -> None:
        if not reservoir_s >= 0:
            raise ValueError(f"reservoir_s must be >= 0, got {reservoir_s}")
        if not cushion_s > 0:
            raise ValueError(f"cushion_s must be > 0, got {cushion_s}")
        self.reservoir_s = float(reservoir_s)
        self.cushion_s = float(cushion_s)

    def reset(self) -> None:
        """Stateless: nothing to forget."""

    def act(self, obs: AbrObservation) -> int:
        top = obs.n_levels - 1
        if obs.buffer_s < self.reservoir_s:
            return 0
        if obs.buffer_s >= self.reservoir_s + self.cushion_s:
            return top
        return int(top * (obs.buffer_s - self.reservoir_s) / self.cushion_s)
