"""One writer per run directory, no leftovers of an earlier run, names that stay path parts, clear errors."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from emulation.rundir import write_json
from testbed import ownership
from testbed.cli import main
from testbed.compare import compare
from testbed.grid import expand_grid, parse_policies
from testbed.runner import run_config
from testbed.scenario import ScenarioError, load_scenario
from testbed.store import load_run, plan


def test_overwrite_clears_an_earlier_agent_run(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "agents" / "aqm").mkdir(parents=True)
    (run_dir / "agents" / "aqm" / "decisions.parquet").write_bytes(b"an earlier agent run")
    write_json(run_dir / "sim-error.json", {"error": "an earlier failure"})
    config = load_scenario("l4s-coexistence", {"duration_s": 1, "probes.warmup_s": 0.2})
    with pytest.raises(ownership.RunDirError, match=r"already holds a run \(agents, sim-error.json\)"):
        run_config(config, run_dir)
    result = run_config(config, run_dir, overwrite=True)
    assert result.status == "ok", result.error
    assert not (run_dir / "agents").exists() and not (run_dir / "sim-error.json").exists()
    assert load_run(run_dir).policy == "dualpi2"  # not mislabelled by the earlier run's decision log


def test_compare_leaves_a_cell_another_process_runs_alone(tmp_path):
    specs = expand_grid(["l4s-coexistence"], parse_policies("dualpi2"), [1], tmp_path, {"duration_s": 2})
    cell = specs[0].run_dir
    lock = ownership.claim(cell)  # another testbed process, as far as the store can tell: a live lock holder
    write_json(cell / "status.json", {"state": "running", "pid": 1, "host": "elsewhere"})
    (cell / "queue.parquet").write_bytes(b"being written")
    log = io.StringIO()
    try:
        report = compare("l4s-coexistence", "dualpi2", "1", tmp_path, {"duration_s": 2}, stream=log)
        assert "1 being run by another testbed process (left alone)" in log.getvalue()
        assert (cell / "queue.parquet").read_bytes() == b"being written"
        assert report.runs_ok == 0
        assert plan(specs).busy == specs
    finally:
        lock.release()
    # Its owner gone, the cell that says "running" is reclaimed.
    assert ownership.is_claimed(cell) is False
    assert plan(specs).to_run == specs


def test_unwritable_results_directory_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["run", "l4s-coexistence", "--duration", "1", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write results to {blocker / 'run'}: Not a directory" in err and "Traceback" not in err
    assert main(["compare", "l4s-coexistence", "--policies", "dualpi2", "--out", str(blocker / "cmp")]) == 2
    assert f"cannot write results to {blocker / 'cmp'}" in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("name", "../../../escaped"), ("name", ".."), ("name", "a b"),
                                          ("flow", "x/y"), ("video", "..")])
def test_names_must_be_path_parts(tmp_path, field, value):
    scenario = {"name": "ok", "flows": [{"name": "bulk", "kind": "classic"}], "duration_s": 2}
    if field == "name":
        scenario["name"] = value
    elif field == "flow":
        scenario["flows"][0]["name"] = value
    else:
        scenario["video"] = [{"name": value}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    with pytest.raises(ScenarioError, match=r"is not a valid name: use letters, digits"):
        load_scenario(path)
    assert not (tmp_path.parent / "escaped").exists()


def test_policy_names_must_be_path_parts():
    from agents.registry import register

    for bad in ("../x", "a/b", ".hidden", "a b"):
        with pytest.raises(ValueError, match="becomes part of a run directory's name"):
            register("aqm", bad, lambda **kw: None)


def test_a_scenario_without_traffic_is_refused(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text(json.dumps({"name": "empty", "duration_s": 5}))
    assert main(["run", str(path)]) == 2
    assert "the scenario has no traffic: give at least one entry under flows: or video:" in capsys.readouterr().err
