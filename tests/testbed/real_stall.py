"""A real-mode run whose event loop stalls for 300 ms at simulated 1 s, as an
overloaded machine would stall it; the hard limit is 50 ms.

``python tests/testbed/real_stall.py OUT_DIR`` runs it in this process (the
real-time scheduler is process-wide) and prints ``{"error": ...}`` as its last line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from emulation.config import SimulationConfig
from emulation.simulation import run_simulation


class Stall:
    """Component: blocks the simulator's thread once, at ``at_s``, for ``stall_s`` of wall time."""

    def __init__(self, at_s: float, stall_s: float) -> None:
        self.at_s, self.stall_s = at_s, stall_s

    def attach(self, sim) -> None:
        self._event = lambda: time.sleep(self.stall_s)  # kept alive: C++ holds a reference
        sim.ns.ScheduleFunction(sim.ns.Seconds(self.at_s), self._event)

    def finish(self, sim) -> None:
        """Nothing to record."""


def main(out_dir: str) -> None:
    config = SimulationConfig(
        name="stall", duration_s=10, emulation={"mode": "real", "hard_limit_ms": 50},
        bottleneck={"rate_mbps": 10}, flows=[{"name": "sim", "kind": "classic", "rtt_ms": 20}],
        probes={"warmup_s": 0.5},
    )
    try:
        run_simulation(config, Path(out_dir), components=[Stall(1.0, 0.3)])
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    print(json.dumps({"error": None}))


if __name__ == "__main__":
    main(sys.argv[1])
