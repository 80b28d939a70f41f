"""What ends a run early, and what it leaves: signals to ``testbed run`` (no orphans, status ``interrupted``,
the tables gathered so far), a killed agent or simulation, the simulation's own wall-clock limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from emulation.rundir import read_json
from testbed import lifecycle

#: Each test runs the testbed as a user would and kills something in it: real processes, tens of seconds.
slow = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _start(out: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "testbed", "run", "l4s-coexistence", "--out", str(out), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _children(out: Path) -> list[psutil.Process]:
    """The simulation and agent processes writing into ``out``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(out) in cmdline and ("testbed.simproc" in cmdline or "agents serve" in cmdline):
            found.append(proc)
    return found


def _wait_running(proc: subprocess.Popen, out: Path, agent: str = "aqm", timeout_s: float = 90) -> None:
    """Until the simulation has connected to its agent (so it is inside the event loop)."""
    log = out / f"agent-{agent}.log"
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "connected" in log.read_text():
            time.sleep(1.0)
            return
        time.sleep(0.2)
    raise AssertionError(f"the run never got going: {proc.stdout.read() if proc.poll() is not None else ''}")


def _no_children_within(out: Path, seconds: float) -> None:
    psutil.wait_procs(_children(out), timeout=seconds)
    assert _children(out) == []


def test_sighup_and_sigterm_stop_the_testbed_as_ctrl_c_does():
    for sig in (signal.SIGHUP, signal.SIGTERM):
        with pytest.raises(KeyboardInterrupt) as caught, lifecycle.stop_signals_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(1)  # the handler runs at the next bytecode
        assert lifecycle.signal_name(caught.value) == sig.name and lifecycle.exit_code(caught.value) == 128 + sig
    with lifecycle.uninterruptible() as arrived:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    assert arrived == [signal.SIGINT]


@slow
def test_sigterm_ends_a_run_cleanly_and_a_second_signal_cannot_cut_the_cleanup(tmp_path):
    signals = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    out = tmp_path / "run"
    proc = _start(out, "--aqm", "pi2", "--duration", "60")
    try:
        _wait_running(proc, out)
        # A second testbed process cannot write into the same run directory meanwhile.
        second = subprocess.run([sys.executable, "-m", "testbed", "run", "l4s-coexistence", "--out", str(out),
                                 "--overwrite"], capture_output=True, text=True, env=ENV, timeout=60)
        assert second.returncode == 2 and "is being written by another testbed process" in second.stderr
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.3)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signals[0], output
    assert f"interrupted ({signal.Signals(signals[0]).name})" in output
    _no_children_within(out, 5)
    status = read_json(out / "status.json")
    assert status["state"] == "failed" and status["error"] == "interrupted"
    queue = pd.read_parquet(out / "queue.parquet")  # the simulation stopped itself and wrote what it had
    assert 0.1 < queue["time_s"].max() < 60
    decisions = pd.read_parquet(out / "agents" / "aqm" / "decisions.parquet")
    assert decisions["done"].iloc[-1] and "interrupted" in decisions["info"].iloc[-1].lower()
    assert not list(out.rglob(".*.partial")) and not list(out.rglob(".*.tmp"))
    # The directory holds that run now: a new run there needs --overwrite.
    again = subprocess.run([sys.executable, "-m", "testbed", "run", "l4s-coexistence", "--out", str(out)],
                           capture_output=True, text=True, env=ENV, timeout=60)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--overwrite" in again.stderr


@slow
def test_kill_9_of_the_testbed_leaves_no_process_and_an_interrupted_status(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--aqm", "pi2", "--duration", "60")
    try:
        _wait_running(proc, out)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    _no_children_within(out, 10)
    status = read_json(out / "status.json")
    assert status["state"] == "failed" and status["error"] == "interrupted"
    assert "died" in status["detail"]
    assert pd.read_parquet(out / "queue.parquet")["time_s"].max() > 0.1


@slow
def test_a_killed_agent_keeps_the_simulations_tables_and_no_temp_file(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--aqm", "pi2", "--duration", "60")
    try:
        _wait_running(proc, out)
        agent = next(p for p in _children(out) if "agents serve" in " ".join(p.cmdline()))
        agent.kill()
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    status = read_json(out / "status.json")
    assert "agent for aqm (pi2) died: killed by SIGKILL" in status["error"]
    assert 0.1 < pd.read_parquet(out / "queue.parquet")["time_s"].max() < 60
    assert read_json(out / "summary.json")["status"] == "failed"
    assert not list(out.rglob(".*.partial")) and not list(out.rglob(".*.tmp"))
    _no_children_within(out, 5)


@slow
def test_a_killed_simulation_is_reported_with_its_log(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--aqm", "pi2", "--duration", "60")
    try:
        _wait_running(proc, out)
        sim = next(p for p in _children(out) if "testbed.simproc" in " ".join(p.cmdline()))
        sim.kill()
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    error = read_json(out / "status.json")["error"]
    assert "simulation process killed by SIGKILL (out of memory, or killed from outside); sim.log ends with:" in error
    assert "Traceback" not in output
    _no_children_within(out, 15)


@slow
def test_the_simulation_keeps_its_own_wall_clock_limit(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--duration", "600", "--timeout", "9")
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, output
    error = read_json(out / "status.json")["error"]
    assert error.startswith("WallClockLimit: wall-clock limit of 9 s reached at")
    assert len(pd.read_parquet(out / "queue.parquet")) > 0  # the part that ran is on record
