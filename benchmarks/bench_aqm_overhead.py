"""Wall time of the same scenario with our DualPI2 vs ns-3's built-in PIE, and
with DualPI2's p' served by an external PI2 agent process over the wire.

Each run is a separate simulation process (as in real use); we report the
simulation's own wall time (Simulator::Run and table writing excluded from
process start-up), packets per wall second (dequeued at the bottleneck), and peak RSS
of each process. Targets: DualPI2 / PIE <= 1.2; agent-controlled / in-queue
DualPI2 < 1.1 (one round trip every 16 ms of simulated time).

    python -m benchmarks.bench_aqm_overhead [--duration 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

from testbed.runner import run_config, with_agents
from testbed.scenario import load_scenario


def measure(queue: str, params: dict, duration_s: float, out: Path, aqm_agent: str | None = None) -> dict:
    config = load_scenario(
        "l4s-coexistence", {"duration_s": duration_s, "bottleneck.queue.type": queue, "bottleneck.queue.params": params}
    )
    config, agents = with_agents(config, aqm_agent, None)
    result = run_config(config, out, agents=agents)
    if result.status != "ok":
        raise RuntimeError(result.error)
    s = result.summary
    packets = s["queues"]["L"]["count"] + s["queues"]["C"]["count"]
    control = (s.get("control") or {}).get("aqm") or {}
    return {"wall_s": s["wall_s"], "packets": packets, "process_s": result.wall_s,
            "rtt_p50_us": control.get("round_trip_p50_us"), "rtt_p99_us": control.get("round_trip_p99_us")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    variants = {"dualpi2": ("dualpi2", {}, None), "pie": ("pie", {"UseEcn": True}, None),
                "pi2-agent": ("dualpi2", {}, "pi2")}
    walls: dict[str, list[float]] = {k: [] for k in variants}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, (queue, params, agent) in variants.items():  # interleaved: drift hits all
                r = measure(queue, params, args.duration, Path(tmp) / f"{name}-{rep}", agent)
                walls[name].append(r["wall_s"])
                info[name] = r
    print(f"scenario l4s-coexistence, {args.duration:g} s simulated, {args.repeats} repeats (median)")
    print(f"{'queue':<10}{'sim wall s':>12}{'pkts/s wall':>14}{'process s':>12}")
    for name in variants:
        med = statistics.median(walls[name])
        print(f"{name:<10}{med:>12.2f}{info[name]['packets'] / med:>14.0f}{info[name]['process_s']:>12.1f}")
    ratio = statistics.median(walls["dualpi2"]) / statistics.median(walls["pie"])
    print(f"DualPI2 / PIE wall-time ratio: {ratio:.3f} (target <= 1.2)")
    agent_ratio = statistics.median(walls["pi2-agent"]) / statistics.median(walls["dualpi2"])
    a = info["pi2-agent"]
    print(f"PI2 agent over the wire / in-queue PI2 wall-time ratio: {agent_ratio:.3f} (target < 1.1); "
          f"round trip p50 {a['rtt_p50_us']:.0f} us, p99 {a['rtt_p99_us']:.0f} us")
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"children: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
