"""Scenario files: the catalogue loads, and bad files give errors that name the
file, the key and what was expected (never a traceback)."""

from __future__ import annotations

import pytest

from testbed.cli import main
from testbed.scenario import ScenarioError, list_scenarios, load_scenario


def test_catalogue_scenarios_load():
    names = list_scenarios()
    for required in ("l4s-coexistence", "l4s-rtt-mix", "classic-fifo"):
        assert required in names
        config = load_scenario(required)
        assert config.flows


def test_l4s_senders_default_to_prague_and_may_choose_dctcp():
    config = load_scenario("l4s-coexistence", {
        "flows": [{"name": "p", "kind": "l4s"}, {"name": "d", "kind": "l4s", "cc": "dctcp"}],
        "video": [{"name": "vp", "transport": "l4s"}, {"name": "vd", "transport": "l4s", "cc": "dctcp"},
                  {"name": "vc"}]})
    assert [f.cc for f in config.flows] == ["prague", "dctcp"]
    assert all(f.ecn for f in config.flows)
    assert [v.congestion_control for v in config.video] == ["prague", "dctcp", "cubic"]


def test_overrides_apply_dotted_keys():
    config = load_scenario("l4s-coexistence", {"duration_s": 3, "bottleneck.rate_mbps": 50, "seed": 7})
    assert (config.duration_s, config.bottleneck.rate_mbps, config.seed) == (3, 50, 7)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("name: x\nflows:\n  - {name: a, kind: quic}\n", ["flows.0.kind", "'l4s'"]),
        ("name: x\nbottleneck: {rate_mbps: -5}\n", ["bottleneck.rate_mbps", "greater than 0"]),
        ("name: x\nbottlenek: {rate_mbps: 5}\n", ["bottlenek", "unknown key"]),
        ("name: x\nflows:\n  - {name: a, kind: l4s, cc: cubic}\n", ["flows.0", "prague or dctcp"]),
        ("name: x\nflows:\n  - {name: a, kind: classic, cc: prague}\n", ["flows.0", "cannot use prague"]),
        ("name: x\nvideo:\n  - {name: v, cc: dctcp}\n", ["video.0", "needs transport: l4s"]),
        ("name: x\nflows: [\n", ["not valid YAML", "line"]),
        ("- just\n- a list\n", ["YAML mapping"]),
        ("name: x\nflows:\n  - {name: a, kind: udp}\n", ["needs rate_mbps"]),
        ("name: x\nflows:\n  - {name: a, kind: l4s}\n  - {name: a, kind: classic}\n", ["unique", "a"]),
    ],
)
def test_bad_scenarios_name_the_problem(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    message = str(err.value)
    assert str(path) in message or "bad.yaml" in message
    for needle in needles:
        assert needle in message


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(ScenarioError, match="l4s-coexistence"):
        load_scenario("no-such-scenario")


def test_cli_reports_bad_scenario_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nbottleneck: {queue: {type: wfq}}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bottleneck.queue.type" in err and "Traceback" not in err


def test_bad_queue_parameter_fails_the_run_with_its_name(tmp_path):
    from testbed.runner import run_config

    config = load_scenario("l4s-coexistence", {"duration_s": 1, "probes.warmup_s": 0.5,
                                               "bottleneck.queue.params": {"Alpha": "fast"}})
    result = run_config(config, tmp_path)
    assert result.status == "failed"
    assert "Alpha='fast'" in result.error
