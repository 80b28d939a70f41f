"""Wall time of the same scenario with our DualPI2 vs ns-3's built-in PIE.

Each run is a separate simulation process (as in real use); we report the
simulation's own wall time (Simulator::Run and table writing excluded from
process start-up), packets per wall second (dequeued at the bottleneck), and peak RSS
of each process. Target: DualPI2 / PIE <= 1.2.

    python -m benchmarks.bench_aqm_overhead [--duration 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

from testbed.runner import run_config
from testbed.scenario import load_scenario


def measure(queue: str, params: dict, duration_s: float, out: Path) -> dict:
    config = load_scenario(
        "l4s-coexistence", {"duration_s": duration_s, "bottleneck.queue.type": queue, "bottleneck.queue.params": params}
    )
    result = run_config(config, out)
    if result.status != "ok":
        raise RuntimeError(result.error)
    s = result.summary
    packets = s["queues"]["L"]["count"] + s["queues"]["C"]["count"]
    return {"wall_s": s["wall_s"], "packets": packets, "process_s": result.wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    variants = {"dualpi2": ("dualpi2", {}), "pie": ("pie", {"UseEcn": True})}
    walls: dict[str, list[float]] = {k: [] for k in variants}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, (queue, params) in variants.items():  # interleaved: drift hits both
                r = measure(queue, params, args.duration, Path(tmp) / f"{name}-{rep}")
                walls[name].append(r["wall_s"])
                info[name] = r
    print(f"scenario l4s-coexistence, {args.duration:g} s simulated, {args.repeats} repeats (median)")
    print(f"{'queue':<10}{'sim wall s':>12}{'pkts/s wall':>14}{'process s':>12}")
    for name in variants:
        med = statistics.median(walls[name])
        print(f"{name:<10}{med:>12.2f}{info[name]['packets'] / med:>14.0f}{info[name]['process_s']:>12.1f}")
    ratio = statistics.median(walls["dualpi2"]) / statistics.median(walls["pie"])
    print(f"DualPI2 / PIE wall-time ratio: {ratio:.3f} (target <= 1.2)")
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"children: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
