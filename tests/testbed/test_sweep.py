"""The run grid and sweeps: policy strings, seed ranges, sweep files, and a sweep that
resumes after an interruption and keeps its failed run (real simulations, 2 s each)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import yaml

from emulation.rundir import write_json
from testbed.cli import main
from testbed.compare import sweep
from testbed.grid import GridError, Policy, parse_policies, parse_policy, parse_seeds, sweep_specs
from testbed.store import plan, run_state

KNOWN = {"aqm": ["fixed", "pi2", "pie"], "abr": ["bba", "bola", "mpc", "rate"]}


def test_seeds_ranges_and_lists():
    assert parse_seeds("1..4") == [1, 2, 3, 4]
    assert parse_seeds("1,2,5") == [1, 2, 5]
    assert parse_seeds("3..4,1,4") == [1, 3, 4]
    assert parse_seeds(7) == [7]
    assert parse_seeds([2, 1]) == [1, 2]
    for bad, message in (("4..2", "backwards"), ("a", "not a number"), ("0..2", "start at 1"), ("", "no seeds")):
        with pytest.raises(GridError, match=message):
            parse_seeds(bad)


def test_policy_strings():
    assert parse_policy("dualpi2", KNOWN) == Policy()
    assert parse_policy("aqm=dualpi2", KNOWN).label == "dualpi2"
    assert parse_policy("pi2", KNOWN) == Policy(aqm="pi2")
    assert parse_policy("pi2-agent", KNOWN) == Policy(aqm="pi2")
    assert parse_policy("bba", KNOWN) == Policy(abr="bba")
    both = parse_policy("abr=mpc+shadow=rate+aqm=fixed+shadow=pi2", KNOWN)
    assert both == Policy(aqm="fixed", abr="mpc", shadows=("pi2", "rate"))
    assert both.label == "aqm=fixed+abr=mpc+shadow=pi2+shadow=rate"
    assert parse_policy(both.label, KNOWN) == both
    assert [p.label for p in parse_policies("dualpi2, aqm=fixed", KNOWN)] == ["dualpi2", "aqm=fixed"]


@pytest.mark.parametrize("text, message", [
    ("nosuch", "unknown policy 'nosuch'; choices: dualpi2, fixed, pi2, pie, bba, bola, mpc, rate"),
    ("aqm=bba", "unknown aqm policy 'bba'; choices: dualpi2, fixed, pi2, pie"),
    ("abr=pi2", "unknown abr policy 'pi2'"),
    ("aqm=pi2+aqm=pie", "aqm given twice"),
    ("cc=cubic", "unknown key 'cc'"),
    ("aqm=", "names no policy"),
])
def test_bad_policy_strings_name_the_choices(text, message):
    with pytest.raises(GridError, match=message.replace("(", r"\(")):
        parse_policy(text, KNOWN)


def test_ambiguous_bare_name_asks_for_the_control():
    known = {"aqm": ["pi2", "llm"], "abr": ["bba", "llm"]}
    with pytest.raises(GridError, match="both an aqm and an abr policy; write aqm=llm or abr=llm"):
        parse_policy("llm", known)
    assert parse_policy("abr=llm", known) == Policy(abr="llm")
    with pytest.raises(GridError, match="repeated: aqm=pi2"):
        parse_policies("pi2,aqm=pi2", known)


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_sweep_grid_layout(tmp_path):
    path = _write(tmp_path / "sweep.yaml", {
        "scenario": "l4s-coexistence", "params": {"bottleneck.rate_mbps": [50, 100]},
        "policies": ["dualpi2", "aqm=pi2"], "seeds": "1..2", "out": str(tmp_path / "out"), "duration_s": 2})
    specs = sweep_specs(path)
    assert len(specs) == 8
    dirs = {s.run_dir.relative_to(tmp_path / "out").as_posix() for s in specs}
    assert "l4s-coexistence/aqm=pi2/rate_mbps=50/2" in dirs
    assert "l4s-coexistence/dualpi2/rate_mbps=100/1" in dirs
    spec = next(s for s in specs if s.policy == "aqm=pi2" and s.params == {"bottleneck.rate_mbps": 50})
    config, agents = spec.build()
    assert config.bottleneck.rate_mbps == 50 and config.duration_s == 2 and config.seed == spec.seed
    assert [a.policy for a in agents] == ["pi2"]
    assert len(sweep_specs(path, out=tmp_path / "elsewhere")) == 8


@pytest.mark.parametrize("data, message", [
    ({"scenario": "l4s-coexistence", "out": "x", "polices": ["pi2"]}, "polices: unknown key"),
    ({"scenario": "l4s-coexistence", "scenarios": ["classic-fifo"], "out": "x"}, "exactly one of scenario"),
    ({"scenario": "l4s-coexistence", "out": "x", "params": {"bottleneck.rate_mbps": []}}, "params: .*no values"),
    ({"scenario": "l4s-coexistence", "params": {"bottleneck.rate_mbps": [10]}}, "out: missing"),
    ({"scenario": "l4s-coexistence", "out": "x", "params": {"bottleneck.rate_mbps": [-5]}},
     "bottleneck.rate_mbps=-5:.*bottleneck.rate_mbps: Input should be greater than 0"),
    ({"scenario": "l4s-coexistence", "out": "x", "policies": "abr=bba"}, "has no video clients"),
    ({"scenario": "no-such-scenario", "out": "x"}, "unknown scenario 'no-such-scenario'"),
])
def test_sweep_file_errors_name_file_and_key(tmp_path, data, message):
    path = _write(tmp_path / "bad-sweep.yaml", data)
    with pytest.raises(GridError, match=r"(?s)bad-sweep\.yaml:.*" + message):
        sweep_specs(path)


def test_sweep_cli_reports_file_errors(tmp_path, capsys):
    path = _write(tmp_path / "sweep.yaml", {"scenario": "l4s-coexistence", "out": str(tmp_path), "seeds": "x"})
    assert main(["sweep", path]) == 2
    assert "sweep.yaml: seed 'x' is not a number" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err


def _mtimes(specs) -> dict[str, int]:
    return {s.params["bottleneck.queue.params.Target"]: (s.run_dir / "status.json").stat().st_mtime_ns for s in specs}


def test_sweep_resumes_and_keeps_its_failed_run(tmp_path):
    out = tmp_path / "out"
    path = _write(tmp_path / "sweep.yaml", {
        "scenario": "l4s-coexistence", "duration_s": 2, "policies": ["dualpi2"], "seeds": [1], "out": str(out),
        "params": {"bottleneck.queue.params.Target": ["15ms", "5ms", "notatime"]}})
    specs = sweep_specs(path)
    log = io.StringIO()
    report = sweep(path, jobs=2, stream=log)
    assert (report.runs_ok, report.runs_failed) == (2, 1), log.getvalue()
    states = {s.params["bottleneck.queue.params.Target"]: run_state(s.run_dir) for s in specs}
    assert states == {"15ms": "ok", "5ms": "ok", "notatime": "failed"}

    summary = pd.read_csv(report.summary_csv)
    failed_row = summary[summary["params"] == "Target=notatime"].iloc[0]
    assert (failed_row["runs_ok"], failed_row["runs_failed"]) == (0, 1)
    assert "Target='notatime' rejected" in report.markdown
    assert "Failed runs" in report.index_html.read_text() and "notatime" in report.index_html.read_text()

    # Interrupt one finished run (as a kill would leave it): only that one runs again.
    before = _mtimes(specs)
    write_json(specs[1].run_dir / "status.json", {"state": "running"})
    assert [s.params for s in plan(specs).to_run] == [specs[1].params]
    log = io.StringIO()
    report = sweep(path, jobs=2, stream=log)
    after = _mtimes(specs)
    assert "3 runs: 1 to run, 1 already ok (kept), 1 failed earlier" in log.getvalue()
    assert log.getvalue().count("[1/1] ok") == 1
    assert after["15ms"] == before["15ms"] and after["notatime"] == before["notatime"]
    assert after["5ms"] > before["5ms"] and run_state(specs[1].run_dir) == "ok"
    assert (report.runs_ok, report.runs_failed) == (2, 1)

    # --retry-failed runs the failed one (and only it) again; it fails again, with its error.
    log = io.StringIO()
    report = sweep(path, jobs=2, retry_failed=True, stream=log)
    assert "3 runs: 1 to run, 2 already ok (kept)" in log.getvalue()
    assert _mtimes(specs)["notatime"] > after["notatime"]
    assert "[1/1] failed" in log.getvalue() and "notatime" in log.getvalue()

    # A run directory holding another cell (here: another duration) is refused, not mixed in.
    with pytest.raises(GridError, match="holds a different run"):
        sweep(path, duration_s=3, stream=io.StringIO())
