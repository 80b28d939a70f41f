"""Wall time of the same scenario with our DualPI2 vs ns-3's built-in PIE, and
with DualPI2's p' served by an external PI2 agent process over the wire, with
and without a decision delay.

Each run is a separate simulation process (as in real use); we report the
simulation's own wall time (Simulator::Run, without process start-up and table
writing), packets per wall second (dequeued at the bottleneck), the wall time
the simulation spent waiting for the agent, and each variant's ratio to the
in-queue DualPI2 run of the same benchmark process (medians over the repeats,
variants interleaved so drift in the machine's load hits all). Targets:
DualPI2 / PIE <= 1.2; PI2 agent over the wire / in-queue DualPI2 <= 1.1 (one
round trip every 16 ms of simulated time).

The agent variants: ``pi2-agent`` acts at the state's instant (the simulation
waits for every answer); ``pi2-agent+Nms`` has a decision delay of N ms, so the
simulation runs on while the agent decides and collects the answer N ms of
simulated time later (emulation/decision_delay.py). Its results differ from
the in-queue run's by that delay; the wait it leaves shows how much of the
agent's time the overlap hid.

    python -m benchmarks.bench_aqm_overhead [--duration 20] [--repeats 3] [--delays 1,16]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from testbed.runner import run_config, with_agents, with_decision_delays
from testbed.scenario import load_scenario


def measure(queue: str, params: dict, duration_s: float, out: Path, aqm_agent: str | None = None,
            decision_delay: str | float = "none") -> dict:
    config = load_scenario(
        "l4s-coexistence", {"duration_s": duration_s, "bottleneck.queue.type": queue, "bottleneck.queue.params": params}
    )
    config, agents = with_agents(config, aqm_agent, None)
    if aqm_agent is not None:
        config = with_decision_delays(config, {"aqm": decision_delay})
    result = run_config(config, out, agents=agents)
    if result.status != "ok":
        raise RuntimeError(result.error)
    s = result.summary
    packets = s["queues"]["L"]["count"] + s["queues"]["C"]["count"]
    control = (s.get("control") or {}).get("aqm") or {}
    waits_s = float(pd.read_parquet(out / "actions.parquet")["wait_us"].sum()) / 1e6 if agents else 0.0
    return {"wall_s": s["wall_s"], "packets": packets, "process_s": result.wall_s, "waits_s": waits_s,
            "rtt_p50_us": control.get("round_trip_p50_us"), "ticks_skipped": control.get("ticks_skipped", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--delays", default="1,16", help="decision delays (ms) of the overlapped agent variants")
    args = parser.parse_args()
    variants = {"dualpi2": ("dualpi2", {}, None, "none"), "pie": ("pie", {"UseEcn": True}, None, "none"),
                "pi2-agent": ("dualpi2", {}, "pi2", "none")}
    for delay in filter(None, args.delays.split(",")):
        variants[f"pi2-agent+{float(delay):g}ms"] = ("dualpi2", {}, "pi2", float(delay))
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, (queue, params, agent, delay) in variants.items():  # interleaved: drift hits all
                runs[name].append(measure(queue, params, args.duration, Path(tmp) / f"{name}-{rep}", agent, delay))
    load_after = os.getloadavg()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    base = median("dualpi2", "wall_s")
    print(f"scenario l4s-coexistence, {args.duration:g} s simulated, {args.repeats} repeats (median); "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (on {os.cpu_count()} cores)")
    print(f"{'variant':<18}{'sim wall s':>11}{'/ dualpi2':>10}{'pkts/s wall':>13}{'waits s':>9}"
          f"{'rtt p50 us':>12}{'skipped':>9}  walls")
    for name in variants:
        wall = median(name, "wall_s")
        rtt = median(name, "rtt_p50_us") if runs[name][0]["rtt_p50_us"] is not None else float("nan")
        walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs[name])
        print(f"{name:<18}{wall:>11.2f}{wall / base:>10.3f}{median(name, 'packets') / wall:>13.0f}"
              f"{median(name, 'waits_s'):>9.2f}{rtt:>12.0f}{median(name, 'ticks_skipped'):>9.0f}  {walls}")
    print(f"DualPI2 / PIE wall-time ratio: {base / median('pie', 'wall_s'):.3f} (target <= 1.2)")
    print(f"PI2 agent over the wire / in-queue PI2 wall-time ratio: {median('pi2-agent', 'wall_s') / base:.3f} "
          f"(target <= 1.1); with a decision delay: " + ", ".join(
              f"{name.removeprefix('pi2-agent+')} {median(name, 'wall_s') / base:.3f}" for name in variants
              if name.startswith("pi2-agent+")))
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"children: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
