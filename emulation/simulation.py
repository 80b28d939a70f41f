"""One simulation run: build the network, attach probes and components, run,
write the run directory.

Components (video clients, control points) plug in through a small
interface so this file stays the one place that orders a run:
``attach(sim)`` before the simulator starts, ``finish(sim)`` after it stops
(also after a failure, so partial results are saved), returning the tables
and summary entries they own.

One error policy holds at the C++ boundary: every Python callable handed to
ns-3 (control-point hooks, the video clients' decision hooks, scheduled
functions) is wrapped by :meth:`Simulation.guard`, so an exception never
unwinds through C++; it is recorded with :meth:`Simulation.fail`, the
simulator stops after the current event, and the run writes what it has.
An agent's stopSimReq ends the run cleanly instead (:meth:`Simulation.end`),
as in ns3-gym. A stop signal (SIGTERM, SIGINT, SIGHUP) and the optional
wall-clock limit stop the run the same way, with the tables written.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pandas as pd

from emulation.config import SimulationConfig
from emulation.metrics import summarise
from emulation.native.build import load_native
from emulation.opengym import AgentStopped
from emulation.probes import BottleneckProbe, GoodputProbe
from emulation.rundir import write_json, write_parquet
from emulation.topology import Dumbbell, build_dumbbell
from emulation.traffic import install_flows

log = logging.getLogger(__name__)

#: Probe buffers are drained to Python this often (simulated), bounding C++ memory.
DRAIN_INTERVAL_S = 1.0
#: How often (simulated) the run checks its wall-clock limit; a pending stop signal is acted on then at the latest.
GUARD_INTERVAL_S = 0.1
#: Signals that stop a run cleanly (the tables gathered so far are written).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

T = TypeVar("T")


class RunInterrupted(Exception):
    """A stop signal ended the run early."""


class WallClockLimit(TimeoutError):
    """The run took longer than its wall-clock limit."""


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
    #: why the run ended before its duration without failing (an agent's stopSimReq)
    ended_by: str | None = None
    #: guarded wrappers of scheduled functions: C++ holds only references, so they live here
    _scheduled: dict = field(default_factory=dict)
    #: how many guarded calls are running (a stop signal may raise only inside one)
    _guard_depth: int = 0
    #: flows.parquet rows components add (real hosts' flows), same columns as the probe's
    extra_flows: list[pd.DataFrame] = field(default_factory=list)
    #: real mode's clock (emulation.real.realtime.RealtimeClock); None in sim mode
    realtime: object = None

    def fail(self, exc: BaseException) -> None:
        """Record a component's failure and stop the simulator (exceptions must not unwind C++)."""
        if self.error is None:
            self.error = exc
            self.ns.Simulator.Stop()

    def end(self, reason: str) -> None:
        """End the run cleanly before its duration (an agent asked to stop)."""
        if self.error is None and self.ended_by is None:
            self.ended_by = reason
            self.ns.Simulator.Stop()

    @property
    def stopping(self) -> bool:
        return self.error is not None or self.ended_by is not None

    def guard(self, fn: Callable[..., T], fallback: T = None) -> Callable[..., T]:
        """``fn`` made safe to hand to C++: any exception stops the run (see the module docstring).

        Once the run is stopping, ``fn`` is not called again and ``fallback`` is returned (a hook that
        must answer C++, such as a video client's quality choice, gets a valid value).
        """

        def guarded(*args: Any) -> T:
            if self.stopping:
                return fallback
            try:
                self._guard_depth += 1
                try:
                    return fn(*args)
                finally:
                    self._guard_depth -= 1
            except AgentStopped as exc:
                self.end(str(exc))
            except BaseException as exc:  # noqa: BLE001 - nothing may unwind through C++
                self.fail(exc)
            return fallback

        return guarded

    def schedule(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` after ``delay_s`` of simulated time, under :meth:`guard` (one wrapper per function, kept
        alive here, so a function that reschedules itself costs nothing more each time)."""
        key = id(fn)
        if key not in self._scheduled:
            self._scheduled[key] = (fn, self.guard(fn))
        self.ns.ScheduleFunction(self.ns.Seconds(delay_s), self._scheduled[key][1])


def _seed(ns, seed: int) -> None:
    # ns-3 practice: a fixed seed and the run number as the varied stream.
    ns.RngSeedManager.SetSeed(1)
    ns.RngSeedManager.SetRun(seed)


@dataclass
class _StopSignals:
    """What a stop signal does in each phase of a run: while it is built, raise :class:`RunInterrupted`;
    once ``sim`` runs, fail it (raising only inside a guarded callback, where the guard catches it, so that
    a wait on an agent ends too); once ``deferring`` (the tables are being written), only count."""

    sim: Simulation | None = None
    deferring: bool = False
    received: list[int] = field(default_factory=list)

    def handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        if self.deferring:
            return
        exc = RunInterrupted(f"stopped by {signal.Signals(signum).name}")
        if self.sim is None or self.sim._guard_depth > 0:
            raise exc
        self.sim.fail(exc)  # between callbacks (e.g. entering one): the simulator stops after this event


@contextmanager
def _stop_on_signals() -> Iterator[_StopSignals]:
    """Install :class:`_StopSignals` for the stop signals (main thread only; signals reach no other)."""
    state = _StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {sig: signal.signal(sig, state.handle) for sig in STOP_SIGNALS}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_simulation(config: SimulationConfig, out_dir: Path, components: list | None = None,
                   wall_limit_s: float | None = None, parent_pid: int | None = None) -> dict:
    """Run ``config`` and write its tables and summary into ``out_dir``; return the summary.

    Raises whatever stopped the run (a component's error, :class:`RunInterrupted`, :class:`WallClockLimit`)
    after writing what was gathered so far. ``wall_limit_s`` counts from this call. In real mode the
    process dies with ``parent_pid`` (the process that started the run), and its real hosts with it.
    """
    with _stop_on_signals() as signals:
        try:
            return _run(config, Path(out_dir), list(components or []), wall_limit_s, signals, parent_pid)
        except RunInterrupted:
            # Raised inside a call into C++ (cppyy prefixes every frame it crossed): say only what happened.
            raise RunInterrupted(f"stopped by {signal.Signals(signals.received[0]).name}") from None


def _run(config: SimulationConfig, out_dir: Path, components: list, wall_limit_s: float | None,
         signals: _StopSignals, parent_pid: int | None = None) -> dict:
    wall_deadline = None if wall_limit_s is None else time.monotonic() + wall_limit_s
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
                     components=[c for c in (realtime, *components) if c is not None])
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
        sim.schedule(DRAIN_INTERVAL_S, drain)

    def check_wall_clock() -> None:
        if wall_deadline is not None and time.monotonic() > wall_deadline:
            raise WallClockLimit(f"wall-clock limit of {wall_limit_s:g} s reached at "
                                 f"{ns.Simulator.Now().GetSeconds():.2f} s of {config.duration_s:g} s simulated")
        sim.schedule(GUARD_INTERVAL_S, check_wall_clock)

    sim.schedule(DRAIN_INTERVAL_S, drain)
    sim.schedule(GUARD_INTERVAL_S, check_wall_clock)
    bottleneck.drain()  # binds the probe's accessors now, not at the first drain inside the event loop
    ns.Simulator.Stop(ns.Seconds(config.duration_s))
    signals.sim = sim
    wall_start = time.perf_counter()
    error: BaseException | None = None
    try:
        ns.Simulator.Run()
    except BaseException as exc:  # an error escaped a guard (e.g. a signal inside it): save what we have
        error = exc
    signals.deferring = True  # from here on the tables are written, whatever arrives
    if error is not None and sim.error is None:
        sim.error = error  # components closing their agents' episodes say why
    error = sim.error
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
    end_s = config.duration_s if error is None and sim.ended_by is None else min(sim_end_s, config.duration_s)
    summary = summarise(config, queue, sojourn, flows, sim.capacity_bits_fn(warmup, max(end_s, warmup)), end_s)
    summary.update(sim.summary_extra)
    summary["sim_end_s"] = sim_end_s
    summary["wall_s"] = wall_s
    summary["status"] = "failed" if error is not None else "ok"
    if sim.ended_by is not None:
        summary["ended_by"] = sim.ended_by
    write_json(out_dir / "summary.json", summary)
    ns.Simulator.Destroy()
    if error is not None:
        raise error
    return summary
