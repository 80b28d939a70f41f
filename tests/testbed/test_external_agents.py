"""Agents the testbed does not start (``--aqm tcp://HOST:PORT``, ``--abr tcp://HOST:BASEPORT``), driven by a
real separate agent process; start-up vs step timeouts; how an episode ends toward an agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emulation.rundir import read_json
from testbed.cli import main
from testbed.runner import ExternalAgent, free_port, parse_agent, with_agents
from testbed.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
AGENT = Path(__file__).with_name("external_agent.py")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
#: One L4S and one classic bulk flow and one short video session over a 20 Mbps DualPI2 bottleneck.
SCENARIO = {
    "name": "external-agents",
    "duration_s": 5,
    "bottleneck": {"rate_mbps": 20, "delay_ms": 1},
    "flows": [{"name": "l4s", "kind": "l4s", "rtt_ms": 20}, {"name": "classic", "kind": "classic", "rtt_ms": 20}],
    "video": [{"name": "v", "rtt_ms": 20, "n_chunks": 3}],
    "probes": {"warmup_s": 1},
}


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "external-agents.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return path


def _start_agent(tmp_path: Path, *endpoints: str) -> tuple[subprocess.Popen, Path]:
    result = tmp_path / "agent-result.json"
    proc = subprocess.Popen([sys.executable, str(AGENT), "--result", str(result), *endpoints], env=ENV)
    return proc, result


def _finish(proc: subprocess.Popen, result: Path) -> dict:
    proc.wait(timeout=60)
    return json.loads(result.read_text())


@pytest.mark.slow
def test_external_aqm_and_abr_agents_drive_the_run(tmp_path, capsys):
    aqm_port, abr_port = free_port(), free_port()
    proc, result = _start_agent(tmp_path, f"aqm:{aqm_port}:0.1", f"abr:{abr_port}:2")
    out = tmp_path / "run"
    # A step timeout far below the simulation's start-up: the connection wait has its own limit.
    rc = main(["run", str(_scenario(tmp_path)), "--aqm", f"tcp://127.0.0.1:{aqm_port}",
               "--abr", f"tcp://127.0.0.1:{abr_port}", "--agent-timeout", "1", "--out", str(out)])
    served = _finish(proc, result)
    assert rc == 0, capsys.readouterr().err
    assert "waiting up to 120 s for your agent at tcp://127.0.0.1:" in capsys.readouterr().err
    assert served["aqm"]["terminated"] and served["aqm"]["steps"] == int(5 / 0.016)
    assert served["aqm"]["info"]["reason"] == "SimulationEnd" and "error" not in served["aqm"]["info"]
    assert served["abr"]["terminated"] and served["abr"]["steps"] == 2  # chunks 1 and 2; chunk 0 is the start one
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["control"]["aqm"] | {"port": 0} == {
        "host": "127.0.0.1", "port": 0, "timeout_s": 1.0, "connect_timeout_s": 120.0, "external": True,
        "ipc": None, "decision_delay": "none", "action": "box", "n_actions": 17, "every_k": 1,
        "reward": config["control"]["aqm"]["reward"]}
    video = __import__("pandas").read_parquet(out / "video.parquet")
    assert video["quality"].tolist() == [1, 2, 2]  # start quality, then the agent's answers
    assert read_json(out / "status.json")["state"] == "ok"
    assert out.parent.joinpath("run").is_dir() and not (out / "agents").exists()  # nothing started, nothing logged


@pytest.mark.slow
def test_stop_sim_req_ends_the_run_cleanly(tmp_path):
    port = free_port()
    proc, result = _start_agent(tmp_path, f"aqm:{port}:0.01:stop=20")
    out = tmp_path / "run"
    rc = main(["run", str(_scenario(tmp_path)), "--aqm", f"tcp://127.0.0.1:{port}", "--out", str(out)])
    served = _finish(proc, result)
    assert rc == 0
    assert served["aqm"]["steps"] == 20 and not served["aqm"]["terminated"]
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and "stopSimReq" in summary["ended_by"]
    assert summary["sim_end_s"] == pytest.approx(21 * 0.016, abs=1e-9)  # the 21st state got the stop
    assert read_json(out / "status.json")["state"] == "ok"


@pytest.mark.slow
def test_a_failed_run_tells_every_agent_why(tmp_path):
    aqm_port, abr_port = free_port(), free_port()
    # The ABR agent answers quality 9 of a 6-level ladder: the run fails; the AQM agent must hear why.
    proc, result = _start_agent(tmp_path, f"aqm:{aqm_port}:0.01", f"abr:{abr_port}:9")
    out = tmp_path / "run"
    rc = main(["run", str(_scenario(tmp_path)), "--aqm", f"tcp://127.0.0.1:{aqm_port}",
               "--abr", f"tcp://127.0.0.1:{abr_port}", "--out", str(out)])
    served = _finish(proc, result)
    assert rc == 1
    status = read_json(out / "status.json")
    assert status["state"] == "failed" and "control point 'abr-v'" in status["error"]
    assert "outside the action space" in status["error"] and "Simulator::Run" not in status["error"]
    aqm = served["aqm"]
    assert aqm["terminated"] and aqm["info"]["reason"] == "GameOver"
    assert "outside the action space" in aqm["info"]["error"]
    assert (out / "queue.parquet").exists()  # the part that ran is on record


def test_endpoint_parsing_and_validated_timeouts():
    assert parse_agent("tcp://gpu-box:5555", "--aqm") == ExternalAgent("gpu-box", 5555)
    assert parse_agent("tcp://[::1]:6000", "--abr") == ExternalAgent("::1", 6000)
    assert parse_agent("pi2", "--aqm") == "pi2"
    assert parse_agent("ipc://@my-agent", "--aqm").ipc == "@my-agent"
    with pytest.raises(ValueError, match="expected ipc://NAME"):
        parse_agent("ipc://", "--aqm")
    for bad in ("tcp://host", "tcp://:5555", "tcp://host:0", "tcp://host:http"):
        with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
            parse_agent(bad, "--aqm")
    config = load_scenario("l4s-coexistence", {"duration_s": 2})
    with pytest.raises(ValueError, match=r"--aqm: timeout_s input should be greater than 0 \(got 0"):
        with_agents(config, "pi2", None, timeout_s=0)
    with pytest.raises(ValueError, match="connect_timeout_s"):
        with_agents(config, ExternalAgent("127.0.0.1", 5555), None, connect_timeout_s=-1)


@pytest.mark.parametrize("option", ["--agent-timeout", "--agent-connect-timeout", "--timeout"])
def test_cli_refuses_non_positive_seconds(capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "l4s-coexistence", option, "0"])
    assert exit_info.value.code == 2 and "expected seconds (a number > 0), got '0'" in capsys.readouterr().err


def test_own_agents_bind_loopback_and_remote_agents_are_explicit():
    config = load_scenario("l4s-coexistence", {"duration_s": 2, "control.aqm": {"host": "10.9.8.7", "port": 6000}})
    wired, agents = with_agents(config, "pi2", None)
    assert wired.control.aqm.host == agents[0].host == "127.0.0.1" and not wired.control.aqm.external
    # Agents the testbed starts beside the simulation listen on a Unix socket of their own (Linux).
    assert wired.control.aqm.ipc == agents[0].ipc and agents[0].ipc.startswith("@l4s-testbed-")
    assert with_agents(config, "pi2", None)[0].control.aqm.ipc != wired.control.aqm.ipc
    # Without an agent the queue runs its own PI2: a control section alone does not make an absent agent.
    in_queue, agents = with_agents(config, None, None)
    assert in_queue.control.aqm is None and agents == []
    remote = load_scenario("l4s-coexistence", {"duration_s": 2,
                                               "control.aqm": {"host": "10.9.8.7", "port": 6000, "external": True}})
    wired, agents = with_agents(remote, None, None, timeout_s=7)
    assert (wired.control.aqm.host, wired.control.aqm.port, wired.control.aqm.timeout_s) == ("10.9.8.7", 6000, 7)
    assert agents == []
