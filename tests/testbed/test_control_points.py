"""Control points over the wire with real processes: the simulation process
(ns-3) and agent processes (python -m agents serve, or a raw protocol peer)."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import zmq

from agents.protocol import codec
from testbed.runner import free_port, run_config, with_agents
from testbed.scenario import load_scenario

SHORT = {"duration_s": 3, "probes.warmup_s": 1}


def test_external_pi2_agent_reproduces_the_in_queue_run(tmp_path):
    config = load_scenario("l4s-coexistence", SHORT)
    inside = run_config(config, tmp_path / "inside")
    wired, agents = with_agents(config, "pi2", None)
    outside = run_config(wired, tmp_path / "agent", agents=agents)
    assert inside.status == outside.status == "ok", outside.error
    for table in ("queue.parquet", "flows.parquet", "sojourn.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(inside.run_dir / table), pd.read_parquet(outside.run_dir / table))
    decisions = pd.read_parquet(outside.run_dir / "agents" / "aqm" / "decisions.parquet")
    ticks = int(3 / 0.016)
    assert len(decisions[decisions["role"] == "acting"]) >= ticks - 1
    assert outside.summary["control"]["aqm"]["steps"] == ticks


def test_aqm_and_two_abr_agents_with_a_shadow(tmp_path):
    config = load_scenario(
        "l4s-coexistence",
        {"duration_s": 12, "probes.warmup_s": 1, "bottleneck.rate_mbps": 20,
         "flows": [{"name": "bulk", "kind": "classic", "rtt_ms": 20}],
         "video": [{"name": "v", "count": 2, "rtt_ms": 20, "n_chunks": 3}]},
    )
    wired, agents = with_agents(config, "pi2", "bba", ("rate",))
    assert [a.control_point for a in agents] == ["aqm", "abr-v-1", "abr-v-2"]
    result = run_config(wired, tmp_path, agents=agents)
    assert result.status == "ok", result.error
    for client in ("v-1", "v-2"):
        d = pd.read_parquet(tmp_path / "agents" / f"abr-{client}" / "decisions.parquet")
        acting, shadow = d[d["role"] == "acting"], d[d["role"] == "shadow"]
        assert set(acting["policy"]) == {"bba"} and set(shadow["policy"]) == {"rate"}
        assert len(acting[~acting["done"]]) == 2  # chunk 0 plays the start quality; one decision per later chunk
    video = pd.read_parquet(tmp_path / "video.parquet")
    assert sorted(video["client"].unique()) == ["v-1", "v-2"]
    assert result.summary["control"]["abr-v-1"]["steps"] == 2


def _sim_process(tmp_path, port: int, host: str, timeout_s: float) -> subprocess.Popen:
    config = load_scenario("l4s-coexistence", {**SHORT, "control.aqm": {"host": host, "port": port, "timeout_s": timeout_s}})
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(config.model_dump(mode="json")))
    return subprocess.Popen([sys.executable, "-m", "testbed.simproc", "--config", str(path), "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _raw_agent(port: int, steps: int, action, released: threading.Event) -> None:
    """A protocol peer that answers ``steps`` states, then sends ``action`` or goes silent (its socket open
    until ``released``)."""
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 60000)
    sock.bind(f"tcp://127.0.0.1:{port}")
    try:
        init = codec.parse_sim_init(sock.recv())
        sock.send(codec.build_sim_init_ack())
        for _ in range(steps):
            codec.parse_env_state(sock.recv(), init.obs_space)
            sock.send(codec.build_env_act(init.act_space, np.array([0.01])))
        sock.recv()
        if action is not None:
            sock.send(codec.build_env_act(init.act_space, np.asarray(action)))
        else:
            released.wait(timeout=60)
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("host", "action", "needle"),
    [
        ("localhost", None, "no answer from agent for control point 'aqm'"),
        ("127.0.0.1", [1.5], "control point 'aqm'"),
    ],
)
def test_dead_or_wrong_agent_fails_the_run_clearly_and_keeps_partial_results(tmp_path, host, action, needle):
    port = free_port()
    released = threading.Event()
    agent = threading.Thread(target=_raw_agent, args=(port, 20, action, released), daemon=True)
    agent.start()
    sim = _sim_process(tmp_path, port, host, timeout_s=2.0)
    out, _ = sim.communicate(timeout=120)
    released.set()
    agent.join(timeout=10)
    assert sim.returncode == 1
    assert needle in out
    summary = pd.read_json(tmp_path / "summary.json", typ="series")
    assert summary["status"] == "failed"
    queue = pd.read_parquet(tmp_path / "queue.parquet")
    assert 0.3 < queue["time_s"].max() < 3.0  # stopped early, tables of the part that ran are there
