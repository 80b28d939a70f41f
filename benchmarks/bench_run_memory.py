"""Memory of a run whose control points are all LLM policies: one agent per point vs one policy server.

Runs ``abr-l4s-mixed --aqm llm --abr llm`` (one AQM and four video clients) twice, with
``--policy-server none`` (an agent process per control point, each loading its model) and with
the default one server per run, and samples the resident memory of every process of the run
(simulation, agents or server) every 0.2 s. Prints the peak of their sum and of the agents alone.

    .venv/bin/python -m benchmarks.bench_run_memory [--duration 5] [--backbone default]

``--backbone`` (default: the shipped checkpoints) runs untrained policies on that backbone instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil


def _sample(root: psutil.Process, stop: threading.Event, peaks: dict) -> None:
    while not stop.is_set():
        total, agents = 0, 0
        try:
            for proc in root.children(recursive=True):
                try:
                    rss = proc.memory_info().rss
                    cmd = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                total += rss
                if "agents" in cmd:
                    agents += rss
        except psutil.Error:
            break
        peaks["total"] = max(peaks.get("total", 0), total)
        peaks["agents"] = max(peaks.get("agents", 0), agents)
        time.sleep(0.2)


def run(server: str, duration_s: float, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "testbed", "run", "abr-l4s-mixed", "--aqm", "llm", "--abr", "llm",
               "--duration", str(duration_s), "--policy-server", server, "--out", f"{tmp}/run"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peaks: dict = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(psutil.Process(proc.pid), stop, peaks))
        t0 = time.perf_counter()
        sampler.start()
        output = proc.communicate()[0]
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"run with --policy-server {server} failed:\n{output[-2000:]}")
        return {**peaks, "wall_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--backbone", default=None, help="untrained policies on this backbone (default: shipped)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.backbone:
        env["TESTBED_LLM_BACKBONE"] = args.backbone
    print(f"abr-l4s-mixed --aqm llm --abr llm, {args.duration:g} s simulated "
          f"({'untrained on ' + args.backbone if args.backbone else 'shipped checkpoints'})")
    for server in ("none", "auto"):
        r = run(server, args.duration, env)
        print(f"  --policy-server {server:<5} peak RSS of the run's processes {r['total'] / 2**20:7.0f} MiB, "
              f"of its agents {r['agents'] / 2**20:7.0f} MiB, wall {r['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
