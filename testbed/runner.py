"""Run one scenario in its own simulation process and record the outcome.

The run directory gets the resolved config first and a ``status.json`` that
says running / ok / failed (with the error), so an interrupted or failed run
is never mistaken for a finished one. The simulation runs in a new process
group that is killed on timeout or Ctrl-C: no orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from emulation.config import SimulationConfig
from emulation.rundir import read_json, write_json, write_yaml

DEFAULT_RUNS_DIR = Path("runs")


class RunFailed(RuntimeError):
    """The simulation process failed; the message carries its error."""


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict | None
    error: str | None
    wall_s: float


def policy_label(config: SimulationConfig) -> str:
    parts = [config.bottleneck.queue.type]
    parts += sorted({v.abr for v in config.all_video()})
    return "+".join(parts)


def default_run_dir(config: SimulationConfig, runs_dir: Path = DEFAULT_RUNS_DIR) -> Path:
    return Path(runs_dir) / config.name / policy_label(config) / str(config.seed)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_config(config: SimulationConfig, run_dir: Path, timeout_s: float | None = None) -> RunResult:
    """Run ``config`` in a simulation process writing into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / "config.yaml", config.model_dump(mode="json"))
    started = time.time()
    write_json(run_dir / "status.json", {"state": "running", "started": started, "pid": os.getpid()})
    if timeout_s is None:
        timeout_s = 120.0 + 20.0 * config.duration_s
    cmd = [sys.executable, "-m", "testbed.simproc", "--config", str(run_dir / "config.yaml"), "--out", str(run_dir)]
    error = None
    with open(run_dir / "sim.log", "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, error = None, f"simulation timed out after {timeout_s:.0f} s (see {run_dir / 'sim.log'})"
        except BaseException:
            _kill_group(proc)
            write_json(run_dir / "status.json", {"state": "failed", "error": "interrupted", "started": started})
            raise
    wall_s = time.time() - started
    if rc not in (0, None) and error is None:
        err_file = run_dir / "sim-error.json"
        if err_file.exists():
            error = read_json(err_file)["error"]
        else:
            error = f"simulation process exited with code {rc}:\n{_tail(run_dir / 'sim.log')}"
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else None
    state = "ok" if error is None else "failed"
    write_json(run_dir / "status.json", {"state": state, "error": error, "started": started, "wall_s": wall_s})
    return RunResult(run_dir=run_dir, status=state, summary=summary, error=error, wall_s=wall_s)
