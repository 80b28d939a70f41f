"""One policy server answering the control points of two real simulations at once, as separate agents would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from agents.llm_agent import LlmPolicy
from agents.protocol.control_points import AbrObservation
from llm.shipped import default_checkpoint
from testbed.runner import ServerSpec, free_port, run_config, with_agents
from testbed.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
# The shipped ABR policy (the default of --abr llm): a trained model's greedy choices are decisive, where an
# untrained one's near-ties could flip on float rounding between a batch and a single stream.
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TESTBED_LLM_")}, "PYTHONPATH": str(REPO)}
#: Two video clients over a 10 Mbps link: short sessions, several decisions each.
SCENARIO = {
    "name": "served",
    "duration_s": 12,
    "bottleneck": {"rate_mbps": 10, "delay_ms": 1},
    "video": [{"name": "v", "count": 2, "rtt_ms": 20, "n_chunks": 5}],
    "probes": {"warmup_s": 1},
}


def _replayed(run_dir: Path) -> dict[str, list[float]]:
    """What the shipped ABR policy (its stall guard included) decides, in process and one stream at a time,
    for each control point's logged observations and rewards: the answer every path (agent, server, batch)
    must give."""
    out = {}
    for path in sorted((run_dir / "agents").glob("*/decisions.parquet")):
        table = pd.read_parquet(path)
        acting = table[(table["role"] == "acting") & ~table["done"]]
        policy = LlmPolicy("abr", checkpoint=str(default_checkpoint("abr")), device="cpu")
        policy.reset()
        answers = []
        for step, (obs, reward) in enumerate(zip(acting["obs"], acting["reward"], strict=True)):
            if step:
                policy.observe_reward(reward)
            answers.append(float(policy.act(AbrObservation.from_vector(obs))))
        out[path.parent.name] = answers
    return out


def _actions(run_dir: Path) -> dict[str, list[float]]:
    out = {}
    for path in sorted((run_dir / "agents").glob("*/decisions.parquet")):
        table = pd.read_parquet(path)
        acting = table[(table["role"] == "acting") & ~table["done"]]
        out[path.parent.name] = [a[0] for a in acting["action"]]
    return out


@pytest.mark.slow
def test_one_server_answers_two_simulations_as_the_policy_decides_alone(tmp_path, monkeypatch):
    for name in ("TESTBED_LLM_BACKBONE", "TESTBED_LLM_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    scenario = tmp_path / "served.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))

    # reference: one agent process per control point
    config, agents = with_agents(load_scenario(scenario), None, "llm", policy_server=None)
    assert not any(isinstance(a, ServerSpec) for a in agents) and len(agents) == 2
    reference = run_config(config, tmp_path / "separate", agents=agents)
    assert reference.status == "ok", reference.error
    expected = _actions(tmp_path / "separate")
    assert set(expected) == {"abr-v-1", "abr-v-2"} and all(len(a) == 4 for a in expected.values())
    assert expected == _replayed(tmp_path / "separate")

    # one server, started by hand, shared by two simulations running at the same time
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "agents", "server", "--abr", "llm", "--port", str(port),
                               "--streams", "4", "--max-wait-ms", "5"], env=ENV, stdout=log, stderr=log)
    try:
        runs = [subprocess.Popen([sys.executable, "-m", "testbed", "run", str(scenario), "--abr", "llm",
                                  "--policy-server", f"tcp://127.0.0.1:{port}", "--out", str(tmp_path / f"run{i}")],
                                 env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for i in range(2)]
        outputs = [r.communicate(timeout=240)[0] for r in runs]
        assert [r.returncode for r in runs] == [0, 0], outputs
        server.wait(timeout=60)  # it stops by itself after its four streams
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert server.returncode == 0, text
    for i in range(2):
        run_dir = tmp_path / f"run{i}"
        # each run's decisions landed in its own directory, batching changed none of them, and the served run
        # is the separate-agent run, chunk for chunk
        assert _actions(run_dir) == expected
        assert _actions(run_dir) == _replayed(run_dir)
        pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "video.parquet"),
                                      pd.read_parquet(tmp_path / "separate" / "video.parquet"))
        assert not list(run_dir.glob("agent-*.log"))  # the runner started no agent of its own
    assert "LLM batches" in text


@pytest.mark.slow
def test_the_runner_shares_one_server_among_a_runs_llm_control_points(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_LLM_BACKBONE", "tiny")
    config = load_scenario("abr-l4s-mixed", {"duration_s": 2.0, "probes.warmup_s": 0.5})
    config, agents = with_agents(config, "llm", "llm", ("pi2",))
    [server] = agents
    assert isinstance(server, ServerSpec) and server.serves == {"aqm": "llm", "abr": "llm"}
    assert server.streams == 1 + len(config.all_video()) and server.shadows == ("pi2",)
    assert config.control.abr.one_endpoint and config.control.abr.port == config.control.aqm.port == server.port
    started = time.time()
    result = run_config(config, tmp_path / "run", agents=agents)
    assert result.status == "ok", result.error
    decisions = pd.read_parquet(tmp_path / "run" / "agents" / "aqm" / "decisions.parquet")
    assert set(decisions["role"]) == {"acting", "shadow"} and set(decisions["policy"]) == {"llm", "pi2"}
    summary = result.summary["agents"]
    assert set(summary) == {"aqm", *(f"abr-{v.name}" for v in config.all_video())}
    assert summary["aqm"]["llm"]["decision_ms_p50"] > 0 and time.time() - started < 300
