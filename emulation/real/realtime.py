"""The simulator in real time, and how well it kept up.

``RealtimeClock.load`` prepares the process before any ns-3 object exists
(the scheduler and checksums are process-wide); as a component it samples
lateness with ``RealtimeLatenessProbe`` and maps the hosts' monotonic clock
onto simulated time. Synchronisation is BestEffort: the probe enforces
``hard_limit_ms`` itself and stops the run with an error and its results
written, where ns-3's own HardLimit mode would abort the process (and cling's
abort handler would hang it).
"""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pandas as pd

from emulation.config import EmulationConfig
from emulation.native.build import load_native
from emulation.ns3_loader import DEFAULT_MODULES
from emulation.probes import vector_to_numpy
from emulation.real.netns import die_with_parent
from emulation.real.preflight import check_real_mode

log = logging.getLogger(__name__)

#: ns-3 modules real mode adds to the default ones.
REAL_MODULES = ("fd-net-device",)
#: Lateness sampling interval.
PROBE_INTERVAL_MS = 1.0
#: A probe event later than this counts as late in the summary.
LATE_THRESHOLD_MS = 1.0


class RealTimeLost(RuntimeError):
    """The simulator fell further behind the wall clock than the hard limit allows."""


class RealtimeClock:
    """Component: real-time scheduling, lateness and the wall-clock origin of simulated time."""

    def __init__(self, emulation: EmulationConfig) -> None:
        self.config = emulation
        self.ns = None
        self.probe = None
        self.scheduler = "normal"
        #: time.monotonic() at simulated time 0 (known once the simulator runs)
        self.origin_monotonic_s: float | None = None

    def load(self, parent_pid: int | None = None):
        """Check the machine, load ns-3 for real mode and switch to the real-time scheduler; return ``ns``."""
        check_real_mode()
        if parent_pid is not None:
            # A run whose parent died has nobody to report to, and its hosts must go with it.
            die_with_parent(parent_pid)
        self.scheduler = self._set_scheduler()
        ns = load_native(DEFAULT_MODULES + REAL_MODULES)
        signal.signal(signal.SIGABRT, signal.SIG_DFL)  # cling's handler hangs while FdReader threads hold locks
        ns.Config.SetDefault("ns3::RealtimeSimulatorImpl::SynchronizationMode", ns.StringValue("BestEffort"))
        ns.GlobalValue.Bind("SimulatorImplementationType", ns.StringValue("ns3::RealtimeSimulatorImpl"))
        # Real hosts check IP and TCP checksums; without this ns-3 forwards headers with checksum 0.
        ns.GlobalValue.Bind("ChecksumEnabled", ns.BooleanValue(True))
        if not ns.DynamicCast[ns.RealtimeSimulatorImpl](ns.Simulator.GetImplementation()):
            raise RuntimeError("real mode needs a process whose simulator has not been created yet")
        # Python threads (the hosts' readers, ABR decisions) run while the simulator waits for real time.
        ns.Simulator.Run.__release_gil__ = True
        self.ns = ns
        return ns

    def _set_scheduler(self) -> str:
        """SCHED_FIFO for this thread and every thread and process it starts from now on (the hosts too).

        Under load the normal scheduler wakes the simulator milliseconds late; a real-time
        policy wakes it in microseconds. The kernel's real-time throttling still leaves the
        machine a share of each second should a run saturate a core (and the hard limit ends it).
        """
        priority = self.config.realtime_priority
        if priority == 0:
            return "normal"
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except OSError as exc:
            log.warning("SCHED_FIFO %d refused (%s): the normal scheduler runs the simulation", priority, exc.strerror)
            return "normal"
        return f"SCHED_FIFO {priority}"

    def attach(self, sim) -> None:
        ns = sim.ns
        self.probe = ns.CreateObject[ns.RealtimeLatenessProbe]()
        self.probe.SetAttribute("Interval", ns.TimeValue(ns.MicroSeconds(int(PROBE_INTERVAL_MS * 1e3))))
        self.probe.SetAttribute("Limit", ns.TimeValue(ns.MicroSeconds(int(self.config.hard_limit_ms * 1e3))))
        self.probe.Start()
        self.probe.GetRealtimeNowS()  # bind it now, not inside the event loop
        self._origin_event = self._mark_origin  # C++ holds only a reference: keep the callable alive
        ns.ScheduleFunction(ns.Seconds(0), self._origin_event)

    def _mark_origin(self) -> None:
        self.origin_monotonic_s = time.monotonic() - self.probe.GetRealtimeNowS()

    def to_sim_s(self, monotonic_s):
        """Simulated time of a ``time.monotonic()`` reading (scalar or array)."""
        if self.origin_monotonic_s is None:
            raise RuntimeError("the simulator has not started: no origin for real timestamps")
        return np.asarray(monotonic_s, dtype=np.float64) - self.origin_monotonic_s

    def health(self) -> dict:
        lateness_ms = vector_to_numpy(self.probe.latenessMs, np.float32).astype(np.float64)
        if lateness_ms.size == 0:
            stats = dict.fromkeys(("lateness_mean_ms", "lateness_p50_ms", "lateness_p99_ms", "lateness_max_ms"))
        else:
            p50, p99 = np.percentile(lateness_ms, [50, 99])
            stats = {"lateness_mean_ms": float(lateness_ms.mean()), "lateness_p50_ms": float(p50),
                     "lateness_p99_ms": float(p99), "lateness_max_ms": float(lateness_ms.max())}
        late = int((lateness_ms > LATE_THRESHOLD_MS).sum())
        return {
            "scheduler": self.scheduler,
            "probe_interval_ms": PROBE_INTERVAL_MS,
            "samples": int(lateness_ms.size),
            "late_threshold_ms": LATE_THRESHOLD_MS,
            "late_events": late,
            "late_fraction": late / lateness_ms.size if lateness_ms.size else None,
            **stats,
            "hard_limit_ms": self.config.hard_limit_ms,
            "limit_exceeded_at_s": self.probe.GetExceededAtS() if self.probe.IsLimitExceeded() else None,
        }

    def lateness_table(self) -> pd.DataFrame:
        """realtime.parquet: the lateness of every probe event."""
        lateness_ms = vector_to_numpy(self.probe.latenessMs, np.float32)
        return pd.DataFrame({"time_s": np.arange(1, lateness_ms.size + 1) * PROBE_INTERVAL_MS / 1e3,
                             "lateness_ms": lateness_ms})

    def finish(self, sim) -> None:
        health = self.health()
        sim.summary_extra["realtime"] = health
        sim.tables["realtime"] = self.lateness_table()
        if health["limit_exceeded_at_s"] is not None:
            raise RealTimeLost(
                f"real time lost at {health['limit_exceeded_at_s']:.3f} s: the simulator fell "
                f"{health['lateness_max_ms']:.1f} ms behind the wall clock (emulation.hard_limit_ms "
                f"{self.config.hard_limit_ms:g}); this machine cannot carry the scenario in real time: lower "
                "bottleneck.rate_mbps or the number of flows, or stop other load"
            )
