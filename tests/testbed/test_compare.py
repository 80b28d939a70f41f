"""``testbed compare`` end to end: a policy comparison over seeds, one run per trace,
the CLI's errors, Ctrl-C without orphans, and the Ray backend on a local instance."""

from __future__ import annotations

import io
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
import yaml

from emulation.rundir import read_json
from testbed.cli import main
from testbed.compare import compare
from testbed.grid import expand_grid, parse_policies, parse_seeds
from testbed.report import t_quantile_975
from testbed.scenario import PACKAGED_DATA
from testbed.store import plan


def test_compare_two_policies_over_two_seeds(tmp_path):
    out = tmp_path / "cmp"
    log = io.StringIO()
    report = compare("l4s-coexistence", "dualpi2,aqm=fixed", "1..2", out, {"duration_s": 2}, jobs=2, stream=log)
    assert (report.runs_ok, report.runs_failed) == (4, 0), log.getvalue()
    assert log.getvalue().count(" ok ") == 4 and "ETA" in log.getvalue()
    runs = {(p, s): out / "l4s-coexistence" / p / "default" / str(s) for p in ("dualpi2", "aqm=fixed") for s in (1, 2)}
    summaries = {key: read_json(d / "summary.json") for key, d in runs.items()}
    assert all(read_json(d / "runspec.json")["policy"] == key[0] for key, d in runs.items())
    assert {read_json(d / "runspec.json")["pid"] for d in runs.values()} == {os.getpid()}  # local: threads here
    assert (runs["aqm=fixed", 1] / "agents" / "aqm" / "decisions.parquet").exists()

    summary = pd.read_csv(report.summary_csv).set_index("policy")
    assert list(summary.index) == ["dualpi2", "aqm=fixed"]
    for policy in summary.index:
        p99 = [summaries[policy, s]["queues"]["C"]["p99_ms"] for s in (1, 2)]
        mean = sum(p99) / 2
        ci = t_quantile_975(1) * math.sqrt(sum((x - mean) ** 2 for x in p99)) / math.sqrt(2)
        assert summary.loc[policy, "c_sojourn_p99_ms_mean"] == pytest.approx(mean)
        assert summary.loc[policy, "c_sojourn_p99_ms_ci95"] == pytest.approx(ci, abs=1e-9)
        assert summary.loc[policy, "runs_ok"] == 2
    # p' held at 0 leaves the classic queue to fill: far longer C sojourns than the PI2 controller keeps.
    assert summary.loc["aqm=fixed", "c_sojourn_p99_ms_mean"] > 3 * summary.loc["dualpi2", "c_sojourn_p99_ms_mean"]
    assert summary.loc["aqm=fixed", "aqm_decision_p50_ms_mean"] > 0
    assert math.isnan(summary.loc["dualpi2", "aqm_decision_p50_ms_mean"])
    assert "| runs ok / failed | 2 / 0 | 2 / 0 |" in report.markdown

    # Everything is done: a second compare runs nothing and rebuilds the same numbers.
    before = {key: (d / "status.json").stat().st_mtime_ns for key, d in runs.items()}
    log = io.StringIO()
    again = compare("l4s-coexistence", "dualpi2,aqm=fixed", "1..2", out, {"duration_s": 2}, jobs=2, stream=log)
    assert "4 runs: 0 to run, 4 already ok (kept)" in log.getvalue()
    assert before == {key: (d / "status.json").stat().st_mtime_ns for key, d in runs.items()}
    pd.testing.assert_frame_equal(pd.read_csv(again.summary_csv).set_index("policy"), summary)


def test_one_run_per_trace_file(tmp_path, capsys):
    traces = tmp_path / "traces"
    traces.mkdir()
    names = sorted(p.name for p in (PACKAGED_DATA / "traces").iterdir())[:2]
    for name in names:
        shutil.copy(PACKAGED_DATA / "traces" / name, traces / name)
    out = tmp_path / "cmp"
    # The video client is cheap to simulate: 20 s of it costs less wall time than the process start.
    rc = main(["compare", "abr-fcc", "--policies", "bba", "--seeds", "1", "--duration", "20", "--traces", str(traces),
               "--out", str(out), "--jobs", "2"])
    assert rc == 0, capsys.readouterr().err
    for name in names:
        run_dir = out / "abr-fcc" / "abr=bba" / f"trace={name}" / "1"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["bottleneck"]["trace"] == str((traces / name).resolve())
        assert read_json(run_dir / "status.json")["state"] == "ok"
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert list(summary["policy"]) == ["abr=bba"] and summary.loc[0, "runs_ok"] == 2  # traces pooled like seeds
    assert not math.isnan(summary.loc[0, "qoe_lin_mean_after_first_mean"])
    assert (out / "report" / "abr-fcc-default-qoe.png").exists()
    assert "QoE_lin per chunk" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--policies", "nosuch"], "unknown policy 'nosuch'; choices: dualpi2,"),
    (["--policies", "abr=bba"], "scenario 'l4s-coexistence' has no video clients"),
    (["--policies", "dualpi2", "--seeds", "3..1"], "seed range '3..1' runs backwards"),
    (["--policies", "dualpi2", "--address", "auto"], "--address is for --backend ray"),
    (["--policies", "dualpi2", "--traces", "/nonexistent"], "not a directory"),
])
def test_compare_cli_errors(tmp_path, capsys, args, message):
    assert main(["compare", "l4s-coexistence", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("status.json"))


def _run_processes(marker: str) -> list[psutil.Process]:
    """Simulation and agent processes whose command line names ``marker`` (this test's directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and ("testbed.simproc" in cmdline or "agents serve" in cmdline):
            found.append(proc)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_stops_every_run_process(tmp_path, sig):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "testbed", "compare", "l4s-coexistence", "--policies", "aqm=pi2", "--seeds", "1..3",
           "--duration", "30", "--jobs", "2", "--out", str(out)]
    # A shell may start children with SIGINT ignored; a terminal's Ctrl-C reaches a default handler.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 90
        while len(_run_processes(str(out))) < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(_run_processes(str(out))) == 4, "two simulations with their agents should be running"
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, output
    psutil.wait_procs(_run_processes(str(out)), timeout=5)
    assert _run_processes(str(out)) == []
    started = [read_json(p) for p in out.rglob("status.json")]
    assert len(started) == 2 and all(s == {"state": "failed", "error": "interrupted"} for s in started)
    specs = expand_grid(["l4s-coexistence"], parse_policies("aqm=pi2"), parse_seeds("1..3"), out, {"duration_s": 30})
    assert len(plan(specs).to_run) == 3  # interrupted and never-started runs both run on resume


@pytest.mark.slow
def test_ray_backend_on_a_local_instance(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the ray backend needs the cluster extra")
    monkeypatch.setenv("TESTBED_LLM_BACKBONE", "tiny")  # takes the path that forwards agent settings to tasks
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        log = io.StringIO()
        report = compare("l4s-coexistence", "dualpi2", "1..2", tmp_path, {"duration_s": 2}, backend="ray", stream=log)
    finally:
        ray.shutdown()
    assert (report.runs_ok, report.runs_failed) == (2, 0), log.getvalue()
    for seed in (1, 2):
        status = read_json(tmp_path / "l4s-coexistence" / "dualpi2" / "default" / str(seed) / "status.json")
        assert status["state"] == "ok"
    # runspec.json records the process that executed the cell: Ray workers, not this process.
    pids = {read_json(p)["pid"] for p in tmp_path.rglob("runspec.json")}
    assert len(pids) >= 1 and os.getpid() not in pids
    assert pd.read_csv(report.summary_csv).loc[0, "runs_ok"] == 2
