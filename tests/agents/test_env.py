"""OpenGymEnv against real simulation processes: the protocol-only minimal_sim and dying ones."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from agents.env import OpenGymEnv, SimulationDied, parse_info
from emulation.opengym import AgentStopped, OpenGymInterface

REPO_ROOT = Path(__file__).resolve().parents[2]
MINIMAL_SIM = Path(__file__).with_name("minimal_sim.py")
SIM_ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def minimal_sim(port: int, *args: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, str(MINIMAL_SIM), "--port", str(port), "--host", host, *args]


def run_episode(env: OpenGymEnv, action: int) -> tuple[list, list, dict]:
    obs, info = env.reset()
    observations, rewards = [obs], []
    while True:
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        observations.append(obs)
        rewards.append(reward)
        if terminated:
            return observations, rewards, info


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_env_drives_the_minimal_simulation(tmp_path: Path, host: str) -> None:
    result = tmp_path / "sim.json"
    with OpenGymEnv(port=0, host=host, timeout_s=10) as env:
        assert env.port > 0 and env.endpoint == f"tcp://{host}:{env.port}"
        env.launch(minimal_sim(env.port, "--steps", "6", "--obs-size", "5", "--result", str(result), host=host),
                   env=SIM_ENV)
        observations, rewards, info = run_episode(env, action=2)
        assert env.observation_space == spaces.Box(0.0, 1e9, (5,), np.float64)
        assert env.action_space == spaces.Discrete(3)
        assert env.sim_process_id == env.process.pid
        assert len(observations) == 7
        assert all(o.dtype == np.float64 and o.shape == (5,) for o in observations)
        np.testing.assert_allclose(observations[1], [0.002 * (j + 1) for j in range(5)])
        assert rewards == [0.5 * k for k in range(1, 7)]
        assert info["reason"] == "GameOver" and info["sim_time_s"] == pytest.approx(0.09)
        env.process.wait(timeout=10)
        assert env.process.returncode == 0
    report = json.loads(result.read_text())
    assert report == {"ack_done": True, "ack_stop": False, "actions": [2] * 6, "stopped_at": None,
                      "final_stop": True, "final_has_action": False}


def test_env_serves_episodes_one_after_another_on_the_same_port() -> None:
    with OpenGymEnv(port=0, timeout_s=10) as env:
        port = env.port
        for episode in range(2):
            env.launch(minimal_sim(port, "--steps", str(2 + episode), "--float-obs"), env=SIM_ENV)
            observations, _, info = run_episode(env, action=episode)
            assert env.port == port
            assert env.observation_space.dtype == np.float32 and observations[0].dtype == np.float32
            assert len(observations) == 3 + episode and info["reason"] == "GameOver"


def test_close_answers_the_pending_state_with_a_stop_request(tmp_path: Path) -> None:
    result = tmp_path / "sim.json"
    env = OpenGymEnv(port=0, timeout_s=10)
    proc = env.launch(minimal_sim(env.port, "--steps", "50", "--result", str(result)), env=SIM_ENV)
    env.reset()
    env.step(1)
    env.close()
    assert proc.returncode == 0 and env.process is None
    assert json.loads(result.read_text())["stopped_at"] == 1


def test_simulation_dying_mid_run_raises_simulation_died() -> None:
    with OpenGymEnv(port=0, timeout_s=10) as env:
        env.launch(minimal_sim(env.port, "--steps", "10", "--die-after", "2"), env=SIM_ENV)
        env.reset()
        env.step(0)
        start = time.monotonic()
        with pytest.raises(SimulationDied, match="exited with code 3") as excinfo:
            env.step(0)
        assert time.monotonic() - start < 5
        assert excinfo.value.exit_code == 3
        assert "dying on purpose after 2 steps" in excinfo.value.stderr_tail
        assert "dying on purpose" in str(excinfo.value)


def test_simulation_failing_before_connecting_raises_simulation_died(tmp_path: Path) -> None:
    stderr_path = tmp_path / "sim.stderr"
    with OpenGymEnv(port=0, timeout_s=10) as env:
        env.launch([sys.executable, "-c", "import sys; sys.stderr.write('no scenario file\\n'); sys.exit(7)"],
                   stderr_path=stderr_path)
        with pytest.raises(SimulationDied, match="code 7 while the agent waited for a simulation to connect") as exc:
            env.reset()
        assert exc.value.stderr_tail == "no scenario file"
    assert stderr_path.read_text() == "no scenario file\n"


def test_close_terminates_a_simulation_that_does_not_stop() -> None:
    env = OpenGymEnv(port=0, timeout_s=10)
    proc = env.launch([sys.executable, "-c", "import time; time.sleep(60)"])
    start = time.monotonic()
    env.close()
    assert proc.returncode is not None and proc.returncode != 0
    assert time.monotonic() - start < 10


def test_receive_timeout_names_the_endpoint() -> None:
    with OpenGymEnv(port=0, timeout_s=0.2) as env:
        with pytest.raises(TimeoutError, match=rf"tcp://127.0.0.1:{env.port} within 0.2 s .*SimInitMsg"):
            env.reset()


def test_step_before_reset_is_refused() -> None:
    with OpenGymEnv(port=0) as env, pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


def test_bind_conflict_is_a_clear_error() -> None:
    with OpenGymEnv(port=0) as env:
        with pytest.raises(OSError, match=f"cannot bind the agent socket at tcp://127.0.0.1:{env.port}"):
            OpenGymEnv(port=env.port)


def test_sim_side_sees_agent_stopped_when_the_env_closes_mid_episode() -> None:
    """OpenGymInterface (simulation side) in a thread against the Env: a closing agent stops the simulation."""
    env = OpenGymEnv(port=0, timeout_s=10)
    gym = OpenGymInterface("aqm", spaces.Box(0, 1, (2,), np.float64), spaces.Box(0, 1, (1,), np.float64),
                           port=env.port, timeout_s=10)
    outcome: list[object] = []

    def simulation() -> None:
        gym.connect()
        try:
            for k in range(100):
                outcome.append(gym.step(np.array([0.1, 0.2]), float(k), {"k": k}))
        except AgentStopped as exc:
            outcome.append(exc)

    thread = threading.Thread(target=simulation)
    thread.start()
    obs, info = env.reset()
    assert info == {"k": 0} and obs.tolist() == [0.1, 0.2]
    env.step(np.array([0.5]))
    env.close()
    thread.join(timeout=10)
    assert outcome[0].tolist() == [0.5]
    assert isinstance(outcome[1], AgentStopped) and "'aqm'" in str(outcome[1])


def test_parse_info() -> None:
    assert parse_info('{"sim_time_s": 1.5}') == {"sim_time_s": 1.5}
    assert parse_info("queue=3") == {"raw": "queue=3"}
    assert parse_info("[1, 2]") == {"raw": "[1, 2]"}
    assert parse_info("") == {}


def test_connection_wait_has_its_own_limit() -> None:
    # The first message may take a simulation's whole start-up; every later one only a step.
    with OpenGymEnv(port=0, timeout_s=0.1, connect_timeout_s=1.0) as env:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"within 1 s \(waiting for a simulation to connect"):
            env.reset()
        assert time.monotonic() - start >= 0.95
    with pytest.raises(ValueError, match="connect_timeout_s must be > 0"):
        OpenGymEnv(port=0, connect_timeout_s=0)


def test_binding_beyond_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="agents.env"), OpenGymEnv(port=0, host="0.0.0.0", timeout_s=1):
        pass
    assert "listens on 0.0.0.0, beyond this machine" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="agents.env"), OpenGymEnv(port=0, host="127.0.0.1", timeout_s=1):
        pass
    assert caplog.text == ""
