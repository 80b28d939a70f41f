"""Learning quality of the LLM ABR policy, end to end through the CLIs.

1. Experience: the chunk-level simulator runs BBA, rate-based and RobustMPC
   over the shared train traces and writes their decisions.parquet.
2. Pools: ``python -m llm pool`` on those (train) and on the same policies over
   valid-fcc (validation, for checkpoint selection only).
3. Adaptation: ``python -m llm adapt`` (LoRA on the chosen backbone).
4. Evaluation: the chunk-level simulator on valid-fcc traces, the adapted LLM
   beside BBA, rate-based and RobustMPC (there is no test set in this repo; the
   validation traces are the honest stand-in, reported as such).

    python -m benchmarks.bench_llm_abr [--train-traces 40] [--valid-traces 20] [--backbone default] [--max-steps 300]

Prints the QoE table; the target is to beat RobustMPC.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-traces", type=int, default=40)
    parser.add_argument("--valid-traces", type=int, default=20)
    parser.add_argument("--backbone", default="default", help="default (SmolLM2-135M), tiny, or a model dir")
    parser.add_argument("--max-steps", type=int, default=300, help="optimiser steps of adaptation")
    parser.add_argument("--out", type=Path, default=None, help="keep pools and checkpoint here")
    args = parser.parse_args()
    py = sys.executable
    work = args.out or Path(tempfile.mkdtemp(prefix="llm-abr-"))
    t0 = time.time()
    for split, traces, limit in (("train", "train", args.train_traces), ("valid", "valid-fcc", args.valid_traces)):
        _run([py, "-m", "testbed.chunksim", "--policy", "bba,rate,mpc", "--traces", traces,
              "--limit", str(limit), "--out", str(work / f"exp-{split}"), "--decisions"])
        decisions = sorted(str(p) for p in (work / f"exp-{split}").glob("*/decisions.parquet"))
        _run([py, "-m", "llm", "pool", "--task", "abr", *decisions, "--out", str(work / f"pool-{split}")])
    print(f"experience and pools: {time.time() - t0:.0f} s", flush=True)
    t1 = time.time()
    print(_run([py, "-m", "llm", "adapt", "--pool", str(work / "pool-train"), "--val-pool", str(work / "pool-valid"),
                "--out", str(work / "ckpt"), "--backbone", args.backbone, "--max-steps", str(args.max_steps),
                "--warmup-steps", str(max(args.max_steps // 10, 1)), "--eval-every", str(max(args.max_steps // 5, 1))])[-1500:])
    print(f"adaptation: {time.time() - t1:.0f} s", flush=True)
    env = dict(os.environ, TESTBED_LLM_CHECKPOINT=str(work / "ckpt"))
    table = _run([py, "-m", "testbed.chunksim", "--policy", "bba,rate,mpc,llm", "--traces", "valid-fcc",
                  "--limit", str(args.valid_traces)], env=env)
    print(f"\nQoE_lin on {args.valid_traces} valid-fcc traces (chunk-level simulator), backbone {args.backbone}, "
          f"{args.max_steps} adaptation steps:\n{table}")
    print(f"total {time.time() - t0:.0f} s; artefacts in {work}")


if __name__ == "__main__":
    main()
