"""Compare policies over seeds (and traces), or sweep parameters: run the grid, then report.

These are the library functions behind ``testbed compare`` and ``testbed sweep``.
A grid resumes where it stopped: finished runs are kept, failed ones are kept
with their error unless ``retry_failed``, unfinished ones run again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from testbed import store
from testbed.backends import BACKENDS, run_specs
from testbed.grid import RunSpec, expand_grid, load_sweep, parse_policies, parse_seeds, sweep_specs, trace_files
from testbed.report import ReportPaths, build_report
from testbed.runner import DEFAULT_RUNS_DIR

REPORT_DIR = "report"


def default_compare_dir(scenario: str) -> Path:
    return DEFAULT_RUNS_DIR / "compare" / Path(scenario).stem


def run_grid(specs: Sequence[RunSpec], out: Path, backend: str = "local", jobs: int | None = None,
             address: str | None = None, retry_failed: bool = False, timeout_s: float | None = None,
             stream: TextIO | None = None, agent_timeout_s: float = 30.0) -> ReportPaths:
    """Run the cells the store says are not done, then report on all of them into ``<out>/report/``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choices: {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise ValueError("--address is for --backend ray")
    stream = stream or sys.stderr
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write results to {out}: {exc.strerror or exc}") from None
    todo = store.plan(specs, retry_failed)
    where = f"ray ({address or 'default address'})" if backend == "ray" else \
        f"{jobs or os.cpu_count()} local workers"
    print(f"{todo.describe(retry_failed)} on {where}", file=stream, flush=True)
    run_specs(todo.to_run, backend, jobs, address, timeout_s, stream, agent_timeout_s)
    return build_report([s.run_dir for s in specs], Path(out) / REPORT_DIR)


def compare(scenario: str, policies: str | Iterable[str], seeds: str | Iterable[int], out: Path | None = None,
            overrides: Mapping[str, object] | None = None, backend: str = "local", jobs: int | None = None,
            address: str | None = None, traces: Path | None = None, retry_failed: bool = False,
            timeout_s: float | None = None, stream: TextIO | None = None, agent_timeout_s: float = 30.0) -> ReportPaths:
    """Run ``scenario`` under each policy and seed (and each trace file in ``traces``) and report on them."""
    params = {"bottleneck.trace": trace_files(traces)} if traces else None
    out = Path(out) if out else default_compare_dir(scenario)
    specs = expand_grid([scenario], parse_policies(policies), parse_seeds(seeds), out, overrides, params)
    return run_grid(specs, out, backend, jobs, address, retry_failed, timeout_s, stream, agent_timeout_s)


def sweep(sweep_file: Path, out: Path | None = None, duration_s: float | None = None, backend: str = "local",
          jobs: int | None = None, address: str | None = None, retry_failed: bool = False,
          timeout_s: float | None = None, stream: TextIO | None = None, agent_timeout_s: float = 30.0) -> ReportPaths:
    """Run the grid a sweep file describes (``out``/``duration_s`` override the file's) and report on it."""
    specs = sweep_specs(sweep_file, out, duration_s)
    target = Path(out) if out else Path(str(load_sweep(sweep_file).out))  # sweep_specs refused a missing out
    return run_grid(specs, target, backend, jobs, address, retry_failed, timeout_s, stream, agent_timeout_s)


def report(paths: Iterable[Path], out_dir: Path) -> ReportPaths:
    """Rebuild a report from stored runs: run directories or trees holding them."""
    paths = [Path(p) for p in paths]
    run_dirs = store.find_run_dirs(paths)
    if not run_dirs:
        raise ValueError(f"no run directories (with a status.json) under {', '.join(map(str, paths))}")
    return build_report(run_dirs, out_dir)
