"""Learning quality of the LLM AQM policy against DualPI2, end to end through the CLIs.

1. Experience: the PI2 agent (the RFC 9332 controller over the wire) runs
   l4s-coexistence for several seeds; its decisions.parquet are the pool.
2. ``python -m llm pool --task aqm`` (train seeds, validation seed), then
   ``python -m llm adapt`` (LoRA on the chosen backbone).
3. Evaluation on a held-out seed: the adapted LLM acting (``--aqm llm``)
   beside the in-queue DualPI2, in the packet-level simulator: L p99 delay,
   C mean delay, utilisation, L:C ratio, and the LLM's decision latency.

    python -m benchmarks.bench_llm_aqm [--seeds 3] [--duration 10] [--backbone tiny] [--max-steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cmd: list[str], env: dict | None = None) -> str:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def _scenario_run(out: Path, seed: int, duration: float, extra: list[str], env: dict | None = None) -> dict:
    _run([sys.executable, "-m", "testbed", "run", "l4s-coexistence", "--seed", str(seed), "--duration", str(duration),
          "--out", str(out), *extra], env=env)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (one more for validation)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="llm-aqm-"))
    py = sys.executable
    t0 = time.time()
    for seed in range(1, args.seeds + 2):
        _scenario_run(work / f"exp-{seed}", seed, args.duration, ["--aqm", "pi2"])
    train = [str(work / f"exp-{s}" / "agents" / "aqm" / "decisions.parquet") for s in range(1, args.seeds + 1)]
    valid = [str(work / f"exp-{args.seeds + 1}" / "agents" / "aqm" / "decisions.parquet")]
    _run([py, "-m", "llm", "pool", "--task", "aqm", *train, "--out", str(work / "pool-train")])
    _run([py, "-m", "llm", "pool", "--task", "aqm", *valid, "--out", str(work / "pool-valid")])
    print(f"experience and pools: {time.time() - t0:.0f} s", flush=True)
    print(_run([py, "-m", "llm", "adapt", "--pool", str(work / "pool-train"), "--val-pool", str(work / "pool-valid"),
                "--out", str(work / "ckpt"), "--backbone", args.backbone, "--max-steps", str(args.max_steps),
                "--warmup-steps", str(max(args.max_steps // 10, 1)),
                "--eval-every", str(max(args.max_steps // 5, 1))])[-800:])
    test_seed = args.seeds + 2
    env = dict(os.environ, TESTBED_LLM_CHECKPOINT=str(work / "ckpt"))
    rows = {
        "dualpi2 (in-queue)": _scenario_run(work / "test-dualpi2", test_seed, args.duration, []),
        "llm (adapted)": _scenario_run(work / "test-llm", test_seed, args.duration, ["--aqm", "llm"], env=env),
    }
    print(f"\nl4s-coexistence, held-out seed {test_seed}, {args.duration:g} s, backbone {args.backbone}, "
          f"{args.max_steps} adaptation steps")
    print(f"{'policy':<20}{'L p99 ms':>10}{'C mean ms':>11}{'util %':>8}{'L:C':>7}{'decision p50/p99 ms':>22}")
    for name, s in rows.items():
        agent = (s.get("agents") or {}).get("aqm", {}).get("llm")
        lat = f"{agent['decision_ms_p50']:.1f}/{agent['decision_ms_p99']:.1f}" if agent else "-"
        print(f"{name:<20}{s['queues']['L']['p99_ms']:>10.2f}{s['queues']['C']['mean_ms']:>11.1f}"
              f"{s['utilisation'] * 100:>8.1f}{s['l_c_ratio']:>7.2f}{lat:>22}")
    print(f"total {time.time() - t0:.0f} s; artefacts in {work}")


if __name__ == "__main__":
    main()
