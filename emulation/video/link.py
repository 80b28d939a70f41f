"""A bottleneck whose rate follows a bandwidth trace.

The forward direction (server -> client, where chunks and bulk data queue)
follows the trace; the reverse direction keeps the configured
``bottleneck.rate_mbps``, which only carries ACKs and requests. Rate changes
are scheduled in C++ (``LinkRateSchedule``), so a trace with thousands of
steps costs no Python during the run. Utilisation in the summary is measured
against the integral of the rate the link really had, not the nominal rate.
"""

from __future__ import annotations

import numpy as np

from emulation.topology import ACCESS_SPEEDUP
from emulation.video.traces import BandwidthTrace

#: Rates below this are raised to it (bit/s): ns-3 divides by the rate to time a
#: transmission, so a zero-rate outage becomes a 50 kb/s trickle (a 1500 B packet
#: started at the floor holds the link 0.24 s).
MIN_RATE_BPS = 50_000.0


class TraceDrivenLink:
    """Component: the bottleneck's forward rate follows ``trace`` x ``scale`` from simulated time 0.

    ``repeat`` wraps the trace when the run outlasts it; otherwise its last rate holds.
    """

    def __init__(
        self, trace: BandwidthTrace, scale: float = 1.0, repeat: bool = True, min_rate_bps: float = MIN_RATE_BPS
    ) -> None:
        if not scale > 0:
            raise ValueError(f"trace {trace.name}: scale must be > 0, got {scale}")
        if not min_rate_bps > 0:
            raise ValueError(f"min_rate_bps must be > 0, got {min_rate_bps}")
        self.trace = trace
        self.scale = float(scale)
        self.repeat = repeat
        self.min_rate_bps = float(min_rate_bps)
        self.offsets_s = trace.times_s - trace.times_s[0]
        self.rates_bps = np.maximum(trace.bandwidth_bps * self.scale, self.min_rate_bps)
        self.schedule = None

    def attach(self, sim) -> None:
        access_bps = sim.config.bottleneck.rate_mbps * 1e6 * ACCESS_SPEEDUP
        peak_bps = float(self.rates_bps.max())
        if peak_bps > access_bps:
            raise ValueError(
                f"trace {self.trace.name} x {self.scale:g} peaks at {peak_bps / 1e6:.1f} Mbps, above the access links' "
                f"{access_bps / 1e6:.1f} Mbps ({ACCESS_SPEEDUP:g} x bottleneck.rate_mbps): raise bottleneck.rate_mbps "
                f"to at least {peak_bps / 1e6 / ACCESS_SPEEDUP:.2f} so the traced link stays the bottleneck"
            )
        ns = sim.ns
        device = ns.DynamicCast[ns.PointToPointNetDevice](sim.net.bottleneck_device)
        self.schedule = ns.CreateObject[ns.LinkRateSchedule]()
        self.schedule.SetAttribute("MinRate", ns.DataRateValue(ns.DataRate(int(round(self.min_rate_bps)))))
        self.schedule.SetAttribute("Repeat", ns.BooleanValue(self.repeat))
        self.schedule.Install(device, self.trace.times_s.tolist(), self.rates_bps.tolist())
        sim.capacity_bits_fn = self.capacity_bits

    def finish(self, sim) -> None:
        """Nothing to write: the schedule's effect shows in the queue and flow tables."""

    def capacity_bits(self, t0_s: float, t1_s: float) -> float:
        """Bits the link could carry over simulated [t0_s, t1_s]: the integral of its rate."""
        return self._cumulative_bits(t1_s) - self._cumulative_bits(t0_s)

    def _cumulative_bits(self, t_s: float) -> float:
        """Integral of the rate from 0 to ``t_s``, with the C++ schedule's wrap or hold rule."""
        offsets, rates = self.offsets_s, self.rates_bps
        t_s = max(float(t_s), 0.0)
        segment_bits = rates[:-1] * np.diff(offsets)
        cumulative = np.concatenate([[0.0], np.cumsum(segment_bits)])
        period_s = float(offsets[-1])
        if self.repeat:
            periods, within_s = divmod(t_s, period_s)
            return periods * float(cumulative[-1]) + float(np.interp(within_s, offsets, cumulative))
        if t_s <= period_s:
            return float(np.interp(t_s, offsets, cumulative))
        return float(cumulative[-1]) + float(rates[-1]) * (t_s - period_s)
