"""Rate-based ABR: follow the recent throughput."""

from __future__ import annotations

from agents.abr.base import check_positive_int, harmonic_mean, highest_level_at_most, recent_throughputs_bps
from agents.protocol.control_points import AbrObservation


class RateBased:
    """Highest bitrate not above the harmonic mean of the last ``window`` chunk throughputs.

    Before any chunk has been measured it keeps ``obs.last_quality`` (the start
    quality), since it has nothing to go on.
    """

    name = "rate"
    control = "abr"

    def __init__(self, window: int = 5) -> None:
        self.window = check_positive_int("window", window)

    def reset(self) -> None:
        """Stateless: the history travels in the observation."""

    def act(self, obs: AbrObservation) -> int:
        samples = recent_throughputs_bps(obs, self.window)
        if samples.size == 0:
            return obs.last_quality
        return highest_level_at_most(obs.bitrates_bps, harmonic_mean(samples))
