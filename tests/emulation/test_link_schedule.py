"""LinkRateSchedule via TraceDrivenLink: rate steps at the trace's times, the floor, the wrap, and capacity."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from emulation.config import BottleneckConfig, FlowConfig, SimulationConfig
from emulation.simulation import run_simulation
from emulation.video import BandwidthTrace, constant_trace
from emulation.video.link import MIN_RATE_BPS, TraceDrivenLink

#: 8 Mbps, 2 Mbps, an outage, repeating every 9 s (the last sample only marks the end).
STEPS = BandwidthTrace(np.array([0.0, 4.0, 8.0, 9.0]), np.array([8e6, 2e6, 0.0, 8e6]), "steps")
#: (simulated time, rate the device should have then)
EXPECTED_RATES = [
    (3.999, 8e6),
    (4.001, 2e6),
    (7.999, 2e6),
    (8.001, MIN_RATE_BPS),
    (9.001, 8e6),
    (12.999, 8e6),
    (13.001, 2e6),
]


class RateSampler:
    """Reads the bottleneck device's DataRate at given simulated times."""

    def __init__(self, times_s: list[float]) -> None:
        self.times_s = times_s
        self.rates_bps: list[float] = []

    def attach(self, sim) -> None:
        ns = sim.ns
        device = sim.net.bottleneck_device

        def read() -> None:
            value = ns.DataRateValue()
            device.GetAttribute("DataRate", value)
            self.rates_bps.append(float(value.Get().GetBitRate()))

        self._read = read  # the C++ side holds only a reference to the callable
        for t in self.times_s:
            ns.ScheduleFunction(ns.Seconds(t), read)

    def finish(self, sim) -> None:
        pass


@pytest.fixture(scope="module")
def steps_run(ns, tmp_path_factory):
    ns.RngSeedManager.ResetNextStreamIndex()
    config = SimulationConfig(
        name="link-steps",
        duration_s=14.0,
        probes={"warmup_s": 1.0},
        bottleneck=BottleneckConfig(rate_mbps=8.0),
        flows=[FlowConfig(name="bulk", kind="classic", rtt_ms=20.0)],
    )
    sampler = RateSampler([t for t, _ in EXPECTED_RATES])
    out_dir = tmp_path_factory.mktemp("steps")
    summary = run_simulation(config, out_dir, components=[TraceDrivenLink(STEPS), sampler])
    return summary, pd.read_parquet(out_dir / "flows.parquet"), sampler


def test_device_rate_steps_at_the_trace_times_and_wraps(steps_run):
    _, _, sampler = steps_run
    np.testing.assert_array_equal(sampler.rates_bps, [rate for _, rate in EXPECTED_RATES])


def goodput_mbps(flows: pd.DataFrame, t0_s: float, t1_s: float) -> float:
    window = flows[(flows["time_s"] > t0_s) & (flows["time_s"] <= t1_s)]
    return float(window["rx_bytes"].sum() * 8 / (t1_s - t0_s) / 1e6)


def test_bulk_goodput_follows_the_steps(steps_run):
    _, flows, _ = steps_run
    assert 0.85 * 8 < goodput_mbps(flows, 1.5, 4.0) <= 8
    assert 0.85 * 2 < goodput_mbps(flows, 5.0, 8.0) <= 2
    assert goodput_mbps(flows, 8.3, 9.0) <= 0.1  # the outage leaks only the floor rate
    assert 0.85 * 8 < goodput_mbps(flows, 11.0, 13.0) <= 8  # second period


def test_utilisation_is_measured_against_the_traced_capacity(steps_run):
    summary, flows, _ = steps_run
    carried_bits = flows.loc[flows["time_s"] > 1.0, "rx_bytes"].sum() * 8
    capacity_bits = TraceDrivenLink(STEPS).capacity_bits(1.0, 14.0)
    # Against the nominal 8 Mbps the same run would look ~35% utilised.
    assert carried_bits / capacity_bits > 0.8
    assert summary["utilisation"] == pytest.approx(carried_bits / capacity_bits, rel=0.1)


def test_capacity_integrates_the_floored_trace_with_wrap_or_hold():
    link = TraceDrivenLink(STEPS)
    period_bits = 4 * 8e6 + 4 * 2e6 + 1 * MIN_RATE_BPS
    assert link.capacity_bits(0.0, 4.0) == pytest.approx(32e6)
    assert link.capacity_bits(3.0, 5.0) == pytest.approx(8e6 + 2e6)
    assert link.capacity_bits(0.0, 9.0) == pytest.approx(period_bits)
    assert link.capacity_bits(0.0, 22.0) == pytest.approx(2 * period_bits + 4 * 8e6)
    held = TraceDrivenLink(STEPS, scale=0.5, repeat=False)
    # Without repeat the last sample's rate (8 Mbps x 0.5) holds after the trace ends.
    assert held.capacity_bits(9.0, 19.0) == pytest.approx(10 * 4e6)
    assert held.capacity_bits(0.0, 4.0) == pytest.approx(16e6)


def test_trace_faster_than_the_access_links_is_rejected():
    config = SimulationConfig(name="x", bottleneck=BottleneckConfig(rate_mbps=1.0),
                              flows=[FlowConfig(name="bulk", kind="classic")])
    sim = types.SimpleNamespace(config=config)
    with pytest.raises(ValueError, match="raise bottleneck.rate_mbps to at least 5.00"):
        TraceDrivenLink(constant_trace(50.0)).attach(sim)
