"""Execution backends: run a list of grid cells here (``local``) or on a Ray cluster (``ray``).

Both call :func:`execute` for each cell, which writes the run into its run
directory; the backends only differ in where that happens. Each run already
is its own simulation process (and agent processes), so the local backend is
a thread pool of ``run_config`` calls. With Ray, every path (the run
directories, the scenario files, trace and manifest files) must be on a
filesystem shared by all nodes at the same path, and every node needs this
project installed in the same environment.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TextIO

import psutil

from testbed import lifecycle, store
from testbed.grid import RunSpec
from testbed.ownership import INTERRUPTED, RunDirBusy, mark_interrupted
from testbed.runner import run_claimed

BACKENDS = ("local", "ray")
#: Command-line markers of the processes run_config starts (the simulation and the agents).
_RUN_PROCESS_MARKERS = ("testbed.simproc", "agents serve", "agents server")
#: Environment variables that configure agents (TESTBED_LLM_CHECKPOINT, ...): forwarded to Ray tasks.
_FORWARDED_ENV_PREFIX = "TESTBED_"


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # ok | failed | busy (another process runs this cell: left alone)
    error: str | None
    wall_s: float


def execute(spec_json: dict, timeout_s: float | None = None, agent_timeout_s: float = 30.0) -> dict:
    """Run one grid cell where this is called (a local thread or a Ray worker); the outcome as plain JSON.

    Agent ports are chosen here, on the host that runs the simulation.
    """
    spec = RunSpec.from_json(spec_json)
    started = time.time()
    try:
        lock = store.prepare(spec)
    except RunDirBusy as exc:
        return {"status": "busy", "error": str(exc), "wall_s": 0.0}
    with lock:
        try:
            config, agents = spec.build(agent_timeout_s)
        except (ValueError, OSError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            store.record_failure(spec, error)
            return {"status": "failed", "error": error, "wall_s": time.time() - started}
        result = run_claimed(config, spec.run_dir, timeout_s, agents, lock.fd)
    return {"status": result.status, "error": result.error, "wall_s": result.wall_s}


class Progress:
    """One line per finished run on the terminal: count, outcome, failures so far, ETA."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = time.time()
        self.stream = stream or sys.stderr

    def finished(self, outcome: RunOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        elapsed_s = time.time() - self.started
        eta_s = elapsed_s / self.done * (self.total - self.done)
        width = len(str(self.total))
        line = (f"[{self.done:>{width}}/{self.total}] {outcome.status:<6} {outcome.spec.name}  {outcome.wall_s:.1f} s"
                f" | {self.failed} failed | ETA {_clock(eta_s)}")
        if outcome.error:
            line += f"\n    {outcome.error.strip().splitlines()[0]}"
        print(line, file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _outcome(spec: RunSpec, data: dict) -> RunOutcome:
    return RunOutcome(spec, data["status"], data.get("error"), float(data.get("wall_s") or 0.0))


def _run_processes() -> list[psutil.Process]:
    """This process's children that run_config started: each leads its own process group."""
    found = []
    for child in psutil.Process().children():
        try:
            cmdline = " ".join(child.cmdline())
            if any(marker in cmdline for marker in _RUN_PROCESS_MARKERS) and os.getpgid(child.pid) == child.pid:
                found.append(child)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def _kill_run_processes(grace_s: float = 10.0) -> None:
    """SIGTERM the process groups of running simulations and agents, SIGKILL what is left after ``grace_s``
    (a simulation writes its tables when it gets SIGTERM)."""
    procs = _run_processes()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
        _, procs = psutil.wait_procs(procs, timeout=grace_s)
        if not procs:
            return


def run_local(specs: Sequence[RunSpec], jobs: int | None = None, timeout_s: float | None = None,
              on_finished: Callable[[RunOutcome], None] | None = None,
              agent_timeout_s: float = 30.0) -> list[RunOutcome]:
    """Run cells on this machine, ``jobs`` at a time (default: one per core).

    Ctrl-C cancels the cells not started, kills the running simulations and
    agents (their whole process groups), marks those runs unfinished so a
    resume runs them again, and re-raises KeyboardInterrupt.
    """
    jobs = max(1, jobs or os.cpu_count() or 1)
    stopping = threading.Event()

    def one(spec: RunSpec) -> RunOutcome:
        if stopping.is_set():
            return RunOutcome(spec, "failed", INTERRUPTED, 0.0)
        try:
            outcome = _outcome(spec, execute(spec.to_json(), timeout_s, agent_timeout_s))
        except Exception as exc:  # a bug or a full disk in one run must not end the others unrecorded
            outcome = RunOutcome(spec, "failed", f"{type(exc).__name__}: {exc}", 0.0)
            if not store.run_state(spec.run_dir) == "busy":
                store.record_failure(spec, outcome.error)
        if stopping.is_set() and outcome.status != "busy":
            mark_interrupted(spec.run_dir)
            return RunOutcome(spec, "failed", INTERRUPTED, outcome.wall_s)
        return outcome

    outcomes: list[RunOutcome] = []
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="testbed-run")
    pending: set[Future] = {pool.submit(one, spec) for spec in specs}
    try:
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                outcomes.append(future.result())
                if on_finished:
                    on_finished(outcomes[-1])
    except BaseException:
        stopping.set()
        _stop_local(pool, pending)
        raise
    pool.shutdown()
    return outcomes


def _stop_local(pool: ThreadPoolExecutor, pending: set[Future]) -> None:
    """Cancel what has not started and kill what has, until no run thread is left (a second signal waits)."""
    with lifecycle.uninterruptible():
        pool.shutdown(wait=False, cancel_futures=True)
        while any(not f.done() for f in pending):
            _kill_run_processes()
            wait(pending, timeout=0.5)
        _kill_run_processes()


def run_ray(specs: Sequence[RunSpec], address: str | None = None, timeout_s: float | None = None,
            on_finished: Callable[[RunOutcome], None] | None = None,
            agent_timeout_s: float = 30.0) -> list[RunOutcome]:
    """Run each cell as a Ray task (one CPU each) on the cluster at ``address`` (or the one already initialised).

    Results land in the run directories, which must be on a filesystem every node shares. The
    ``TESTBED_*`` environment (e.g. the LLM checkpoint) goes with each task, as local runs inherit it.
    Ctrl-C cancels the tasks; a running task gets KeyboardInterrupt, so run_config kills its processes.
    """
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install -e '.[cluster]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV_PREFIX)}
    remote = ray.remote(num_cpus=1, max_retries=0)(execute)
    if env:
        remote = remote.options(runtime_env={"env_vars": env})
    pending = {remote.remote(spec.to_json(), timeout_s, agent_timeout_s): spec for spec in specs}
    outcomes: list[RunOutcome] = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    outcome = _outcome(spec, ray.get(ref))
                except ray.exceptions.RayError as exc:
                    error = f"ray task failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                    store.record_failure(spec, error)
                    outcome = RunOutcome(spec, "failed", error, 0.0)
                outcomes.append(outcome)
                if on_finished:
                    on_finished(outcome)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        ray.wait(list(pending), num_returns=len(pending), timeout=30)
        raise
    return outcomes


def run_specs(specs: Sequence[RunSpec], backend: str = "local", jobs: int | None = None, address: str | None = None,
              timeout_s: float | None = None, stream: TextIO | None = None,
              agent_timeout_s: float = 30.0) -> list[RunOutcome]:
    """Run cells on the chosen backend with progress lines on ``stream`` (stderr by default)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choices: {', '.join(BACKENDS)}")
    if not specs:
        return []
    progress = Progress(len(specs), stream)
    if backend == "ray":
        return run_ray(specs, address, timeout_s, progress.finished, agent_timeout_s)
    return run_local(specs, jobs, timeout_s, progress.finished, agent_timeout_s)
