"""One simulation run: build the network, attach probes and components, run,
write the run directory.

Components (video clients, control points) plug in through a small
interface so this file stays the one place that orders a run:
``attach(sim)`` before the simulator starts, ``finish(sim)`` after it stops
(also after a failure, so partial results are saved), returning the tables
and summary entries they own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd

from emulation.config import SimulationConfig
from emulation.metrics import summarise
from emulation.native.build import load_native
from emulation.probes import BottleneckProbe, GoodputProbe
from emulation.rundir import write_json, write_parquet
from emulation.topology import Dumbbell, build_dumbbell
from emulation.traffic import install_flows

log = logging.getLogger(__name__)

#: Probe buffers are drained to Python this often (simulated), bounding C++ memory.
DRAIN_INTERVAL_S = 1.0


class Component(Protocol):
    """Something a run carries besides bulk flows (video clients, control points)."""

    def attach(self, sim: Simulation) -> None: ...

    def finish(self, sim: Simulation) -> None: ...


@dataclass
class Simulation:
    config: SimulationConfig
    out_dir: Path
    ns: object = None
    net: Dumbbell | None = None
    components: list = field(default_factory=list)
    #: tables components add: file stem -> table, written with the rest
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: summary entries components add
    summary_extra: dict = field(default_factory=dict)
    capacity_bits_fn: object = None
    #: the first failure of a component inside the event loop; the run stops at once
    error: BaseException | None = None
    #: flows.parquet rows components add (real hosts' flows), same columns as the probe's
    extra_flows: list[pd.DataFrame] = field(default_factory=list)
    #: real mode's clock (emulation.real.realtime.RealtimeClock); None in sim mode
    realtime: object = None

    def fail(self, exc: BaseException) -> None:
        """Record a component's failure and stop the simulator (exceptions must not unwind C++)."""
        if self.error is None:
            self.error = exc
            self.ns.Simulator.Stop()


def _seed(ns, seed: int) -> None:
    # ns-3 practice: a fixed seed and the run number as the varied stream.
    ns.RngSeedManager.SetSeed(1)
    ns.RngSeedManager.SetRun(seed)


def run_simulation(config: SimulationConfig, out_dir: Path, components: list | None = None,
                   parent_pid: int | None = None) -> dict:
    """Run ``config`` and write its tables and summary into ``out_dir``; return the summary.

    In real mode the process dies with ``parent_pid`` (the process that started the run), and
    its real hosts with it. Raises whatever stopped the run, after writing what was gathered so far.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    realtime = None
    if config.real_mode:  # real time, real hosts: emulation/real/
        from emulation.real.realtime import RealtimeClock

        realtime = RealtimeClock(config.emulation)
        ns = realtime.load(parent_pid)
    else:
        ns = load_native()
    _seed(ns, config.seed)
    sim = Simulation(config=config, out_dir=out_dir, ns=ns, realtime=realtime,
                     components=[c for c in (realtime, *(components or [])) if c is not None])
    sim.net = build_dumbbell(ns, config)
    if hasattr(sim.net.queue_disc, "AssignStreams"):
        sim.net.queue_disc.AssignStreams(config.seed)
    sinks = install_flows(ns, config, sim.net)
    interval_s = config.probes.interval_ms / 1e3
    bottleneck = BottleneckProbe(ns, sim.net.queue_disc, interval_s)
    goodput = GoodputProbe(ns, sinks, [f.name for f in config.all_flows() if not config.is_real(f)], interval_s)
    rate_bps = config.bottleneck.rate_mbps * 1e6
    sim.capacity_bits_fn = lambda t0, t1: rate_bps * (t1 - t0)
    if config.bottleneck.capture:
        ns.PointToPointHelper().EnablePcap(str(out_dir / "bottleneck"), sim.net.bottleneck_device, False, False)
    try:
        for component in sim.components:
            component.attach(sim)
    except BaseException:
        ns.Simulator.Destroy()
        raise

    def drain() -> None:
        bottleneck.drain()
        ns.ScheduleFunction(ns.Seconds(DRAIN_INTERVAL_S), drain)

    ns.ScheduleFunction(ns.Seconds(DRAIN_INTERVAL_S), drain)
    bottleneck.drain()  # binds the probe's accessors now, not at the first drain inside the event loop
    ns.Simulator.Stop(ns.Seconds(config.duration_s))
    wall_start = time.perf_counter()
    error: BaseException | None = None
    try:
        ns.Simulator.Run()
    except BaseException as exc:  # a component failed inside a callback: save what we have
        error = exc
    error = error or sim.error
    wall_s = time.perf_counter() - wall_start
    for component in sim.components:
        try:
            component.finish(sim)
        except Exception as exc:  # keep the first error, still write the rest
            log.exception("component %s failed to finish", type(component).__name__)
            error = error or exc
    sim_end_s = ns.Simulator.Now().GetSeconds()

    queue = bottleneck.queue_table()
    sojourn = bottleneck.sojourn_table()
    flows = goodput.flows_table()
    if sim.extra_flows:
        flows = pd.concat([flows, *sim.extra_flows], ignore_index=True).sort_values("time_s", kind="stable")
        flows = flows.reset_index(drop=True)
    write_parquet(out_dir / "queue.parquet", queue)
    write_parquet(out_dir / "sojourn.parquet", sojourn)
    write_parquet(out_dir / "flows.parquet", flows)
    for stem, table in sim.tables.items():
        write_parquet(out_dir / f"{stem}.parquet", table)
    warmup = config.probes.warmup_s
    summary = summarise(config, queue, sojourn, flows, sim.capacity_bits_fn(warmup, config.duration_s))
    summary.update(sim.summary_extra)
    summary["sim_end_s"] = sim_end_s
    summary["wall_s"] = wall_s
    summary["status"] = "failed" if error is not None else "ok"
    write_json(out_dir / "summary.json", summary)
    ns.Simulator.Destroy()
    if error is not None:
        raise error
    return summary
