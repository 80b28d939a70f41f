"""BOLA-E (Spiteri et al., INFOCOM 2016 and MMSys 2018), after dash.js' BolaRule.

BOLA picks the quality maximising ``(V * (u_q + gamma_p) - buffer_s) / b_q``
with utility ``u_q = ln(b_q / b_0)``: a Lyapunov drift-plus-penalty rule that
trades utility against buffer. ``V`` is set so the top quality is still worth
downloading up to ``buffer_target_s``: ``V = buffer_target_s / (u_top + gamma_p)``.
With the standard ladder that gives level 0 below about 14 s and the top level
from about 21 s.

The "E" guards of dash.js (v2.6 BolaRule), all driven by the harmonic mean of
the last ``throughput_window`` chunk throughputs:

- Startup: until the buffer exceeds ``chunk_duration_s / rebuffer_safety``,
  choose by throughput x ``bandwidth_safety`` instead of buffer, so a session
  does not crawl up from the lowest level.
- Oscillation guard (BOLA-O): never *increase* quality above both the last
  quality and the highest level the throughput sustains.
- Insufficient-buffer guard: step down while a chunk's bitrate exceeds
  ``rebuffer_safety x throughput x buffer_s / chunk_duration_s``.

This is the placeholder-free variant: dash.js' placeholder buffer and the
pauses BOLA asks for above its target need the client to delay requests, which
an ABR answering only a quality cannot do.
"""

from __future__ import annotations

import numpy as np

from agents.abr.base import check_positive_int, harmonic_mean, highest_level_at_most, recent_throughputs_bps
from agents.protocol.control_points import AbrObservation


class BolaE:
    """Buffer-based BOLA with the BOLA-E throughput guards (see the module docstring)."""

    name = "bola"
    control = "abr"

    def __init__(
        self,
        gamma_p: float = 5.0,
        buffer_target_s: float = 25.0,
        throughput_window: int = 3,
        bandwidth_safety: float = 0.9,
        rebuffer_safety: float = 0.5,
    ) -> None:
        if not gamma_p > 0:
            raise ValueError(f"gamma_p must be > 0, got {gamma_p}")
        if not buffer_target_s > 0:
            raise ValueError(f"buffer_target_s must be > 0, got {buffer_target_s}")
        for name, value in (("bandwidth_safety", bandwidth_safety), ("rebuffer_safety", rebuffer_safety)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        self.gamma_p = float(gamma_p)
        self.buffer_target_s = float(buffer_target_s)
        self.throughput_window = check_positive_int("throughput_window", throughput_window)
        self.bandwidth_safety = float(bandwidth_safety)
        self.rebuffer_safety = float(rebuffer_safety)
        self.reset()

    def reset(self) -> None:
        """Back to the startup phase."""
        self._steady = False

    def buffer_quality(self, bitrates_bps: np.ndarray, buffer_s: float) -> int:
        """The plain BOLA choice for a buffer level (ties go to the higher level, as in dash.js)."""
        rates = np.asarray(bitrates_bps, dtype=np.float64)
        utilities = np.log(rates / rates[0])
        v_s = self.buffer_target_s / (utilities[-1] + self.gamma_p)
        scores = (v_s * (utilities + self.gamma_p) - buffer_s) / rates
        return int(np.flatnonzero(scores == scores.max())[-1])

    def act(self, obs: AbrObservation) -> int:
        samples = recent_throughputs_bps(obs, self.throughput_window)
        if samples.size == 0:
            return obs.last_quality
        throughput_bps = harmonic_mean(samples)
        rates = np.asarray(obs.bitrates_bps, dtype=np.float64)

        if not self._steady:
            self._steady = obs.buffer_s > obs.chunk_duration_s / self.rebuffer_safety
            return highest_level_at_most(rates, throughput_bps * self.bandwidth_safety)

        quality = self.buffer_quality(rates, obs.buffer_s)
        if quality > obs.last_quality:
            sustainable = highest_level_at_most(rates, throughput_bps)
            if quality > sustainable:
                quality = max(sustainable, obs.last_quality)
        safe_bitrate_bps = self.rebuffer_safety * throughput_bps * obs.buffer_s / obs.chunk_duration_s
        while quality > 0 and rates[quality] > safe_bitrate_bps:
            quality -= 1
        return quality
