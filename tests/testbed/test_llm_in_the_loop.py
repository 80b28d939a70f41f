"""The LLM agent answering live control points of short packet-level runs, in
replace and shadow mode, for AQM and ABR (tiny random Llama on the CPU)."""

from __future__ import annotations

import pandas as pd
import pytest

from testbed.runner import run_config, with_agents
from testbed.scenario import load_scenario


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    monkeypatch.setenv("TESTBED_LLM_BACKBONE", "tiny")


def _aqm_config():
    return load_scenario("l4s-coexistence", {"duration_s": 1.0, "probes.warmup_s": 0.2, "control.aqm": {"every_k": 4}})


def _abr_config():
    return load_scenario("abr-fcc", {"duration_s": 30, "video": [{"name": "client", "rtt_ms": 80, "n_chunks": 4}]})


def _decisions(run_dir, point: str) -> pd.DataFrame:
    table = pd.read_parquet(run_dir / "agents" / point / "decisions.parquet")
    return table[~table["done"]]


@pytest.mark.parametrize("control", ["aqm", "abr"])
def test_llm_replaces_the_classic_controller(tmp_path, control):
    if control == "aqm":
        config, agents = with_agents(_aqm_config(), "llm", None)
        point, steps = "aqm", int(1.0 / 0.016) // 4
    else:
        config, agents = with_agents(_abr_config(), None, "llm")
        point, steps = "abr-client", 3
    result = run_config(config, tmp_path, agents=agents)
    assert result.status == "ok", result.error
    d = _decisions(tmp_path, point)
    assert set(d["policy"]) == {"llm"} and set(d["role"]) == {"acting"}
    assert len(d) == steps
    stats = result.summary["agents"][point]["llm"]
    assert stats["decision_ms_p50"] > 0 and stats["decision_ms_p99"] >= stats["decision_ms_p50"]
    assert stats["fallback_rate"] == 0.0


@pytest.mark.parametrize(("control", "behind"), [("aqm", "pi2"), ("abr", "mpc")])
def test_llm_shadows_the_classic_controller(tmp_path, control, behind):
    if control == "aqm":
        config, agents = with_agents(_aqm_config(), behind, None, ("llm",))
        point = "aqm"
    else:
        config, agents = with_agents(_abr_config(), None, behind, ("llm",))
        point = "abr-client"
    result = run_config(config, tmp_path, agents=agents)
    assert result.status == "ok", result.error
    d = _decisions(tmp_path, point)
    acting, shadow = d[d["role"] == "acting"], d[d["role"] == "shadow"]
    assert set(acting["policy"]) == {behind} and set(shadow["policy"]) == {"llm"}
    assert list(acting["step"]) == list(shadow["step"])
    assert "agreement" in result.summary["agents"][point]["llm"]


def test_missed_deadline_falls_back_and_is_counted(tmp_path):
    config, agents = with_agents(_aqm_config(), "llm", None, aqm_args={"deadline_ms": "0.001", "fallback": "pi2"})
    result = run_config(config, tmp_path, agents=agents)
    assert result.status == "ok", result.error
    d = _decisions(tmp_path, "aqm")
    assert d["fallback"].all()
    assert result.summary["agents"]["aqm"]["llm"]["fallback_rate"] == 1.0
