"""``python -m agents serve`` end to end, the serve loop, and the sim-side interface against a real agent process."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from gymnasium import spaces

from agents.aqm import FixedProbability, Pi2Controller
from agents.env import OpenGymEnv
from agents.protocol.control_points import AbrObservation, AqmObservation, aqm_action_grid
from agents.serve import aqm_grid_index, obs_fields, serve, to_space_action
from emulation.opengym import ControlPointError, OpenGymInterface

REPO_ROOT = Path(__file__).resolve().parents[2]
MINIMAL_SIM = Path(__file__).with_name("minimal_sim.py")
SIM_ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
DECISION_COLUMNS = ["control_point", "step", "sim_time_s", "policy", "role", "obs", "action", "reward",
                    "decision_ms", "fallback", "done", "info"]
AQM_SIZE = len(AqmObservation.field_names())
AQM_OBS_SPACE = spaces.Box(0.0, np.inf, (AQM_SIZE,), np.float64)


def start_serve(*args: str, host: str = "127.0.0.1") -> tuple[subprocess.Popen, int]:
    """Start an agent process on a free port; its log line says which."""
    proc = subprocess.Popen([sys.executable, "-m", "agents", "serve", "--port", "0", "--host", host, *args],
                            cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r" on tcp://[^ ]+:(\d+)$", line.strip())
        if found:
            return proc, int(found.group(1))
    raise AssertionError(f"agent exited with code {proc.wait()} before binding")


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=15)
    return proc.returncode, stderr


def aqm_vector(qdelay_s: float) -> np.ndarray:
    vec = np.zeros(AQM_SIZE)
    vec[0] = qdelay_s
    return vec


# ---------------------------------------------------------------- end to end


def test_serve_cli_writes_decisions_for_the_minimal_simulation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sim_report = tmp_path / "sim.json"
    agent, port = start_serve("--control", "aqm", "--policy", "pi2", "--shadow", "pie", "--shadow", "fixed",
                              "--out", str(out), "--timeout", "10", "--control-point", "aqm-bottleneck")
    steps = 20
    sim = subprocess.run([sys.executable, str(MINIMAL_SIM), "--port", str(port), "--steps", str(steps),
                          "--obs-size", str(AQM_SIZE), "--n-actions", "17", "--result", str(sim_report)],
                         env=SIM_ENV, capture_output=True, text=True, timeout=30)
    assert sim.returncode == 0, sim.stderr
    rc, stderr = finish(agent)
    assert rc == 0, stderr
    report = json.loads(sim_report.read_text())
    assert report["final_stop"] and not report["final_has_action"]

    table = pq.read_table(out / "decisions.parquet")
    assert table.column_names == DECISION_COLUMNS
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items() if not k.startswith(b"ARROW")}
    assert meta == {"obs_fields": json.dumps(AqmObservation.field_names()), "control_point": "aqm-bottleneck",
                    "control": "aqm", "acting_policy": "pi2"}
    rows = table.to_pylist()
    assert len(rows) == 3 * steps + 1
    acting = [r for r in rows if r["role"] == "acting" and not r["done"]]
    assert [r["step"] for r in acting] == list(range(steps))
    assert {r["policy"] for r in rows if r["role"] == "shadow"} == {"pie", "fixed"}
    assert sum(r["role"] == "shadow" for r in rows) == 2 * steps

    # The acting actions are what the simulation received, and what PI2 computes from its observations.
    assert [int(r["action"][0]) for r in acting] == report["actions"]
    pi2 = Pi2Controller()
    expected = [aqm_grid_index(pi2.act(AqmObservation.from_vector(r["obs"])), 17) for r in acting]
    assert report["actions"] == expected and len(set(expected)) > 1

    for r in rows[:-1]:
        k = r["step"]
        assert r["control_point"] == "aqm-bottleneck"
        assert r["obs"] == pytest.approx([(k + 1) * 0.001 * (j + 1) for j in range(AQM_SIZE)])
        assert r["sim_time_s"] == pytest.approx(0.015 * k)
        assert r["reward"] == 0.5 * k
        assert json.loads(r["info"]) == {"sim_time_s": pytest.approx(0.015 * k)}
        assert len(r["action"]) == 1 and r["decision_ms"] >= 0 and not r["fallback"] and not r["done"]
    last = rows[-1]
    assert last["done"] and last["role"] == "acting" and last["policy"] == "pi2" and last["step"] == steps
    assert last["action"] == [] and math.isnan(last["decision_ms"]) and last["reward"] == 0.5 * steps


def test_mode_shadow_behind_makes_the_named_policy_the_shadow(tmp_path: Path) -> None:
    out = tmp_path / "run"
    agent, port = start_serve("--control", "aqm", "--policy", "pie", "--mode", "shadow", "--behind", "pi2",
                              "--out", str(out), "--timeout", "10")
    sim = subprocess.run([sys.executable, str(MINIMAL_SIM), "--port", str(port), "--steps", "5",
                          "--obs-size", str(AQM_SIZE), "--n-actions", "17"],
                         env=SIM_ENV, capture_output=True, text=True, timeout=30)
    assert sim.returncode == 0, sim.stderr
    rc, stderr = finish(agent)
    assert rc == 0, stderr
    rows = [r for r in pq.read_table(out / "decisions.parquet").to_pylist() if not r["done"]]
    assert {(r["policy"], r["role"]) for r in rows} == {("pi2", "acting"), ("pie", "shadow")}


def test_mode_shadow_without_behind_is_refused() -> None:
    proc = subprocess.run([sys.executable, "-m", "agents", "serve", "--control", "aqm", "--policy", "pie",
                           "--mode", "shadow", "--port", "0"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1 and "--behind" in proc.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_interface_and_agent_process_step_together(host: str) -> None:
    p_prime = float(aqm_action_grid(17)[9])
    agent, port = start_serve("--control", "aqm", "--policy", "fixed", "--policy-arg", f"p_prime={p_prime!r}",
                              "--timeout", "10", host=host)
    gym = OpenGymInterface("aqm", AQM_OBS_SPACE, spaces.Discrete(17), host=host, port=port, timeout_s=10)
    try:
        gym.connect()
        actions = [gym.step(aqm_vector(0.001 * k), 0.0, {"sim_time_s": 0.015 * k}) for k in range(10)]
        gym.close(aqm_vector(0.0), 0.0, {}, reason="SimulationEnd")
    finally:
        rc, stderr = finish(agent)
    assert actions == [9] * 10
    assert rc == 0, stderr
    assert len(gym.round_trips_s) == 10 and not gym.connected


def test_agent_action_outside_the_space_is_a_control_point_error() -> None:
    agent, port = start_serve("--control", "aqm", "--policy", "fixed", "--policy-arg", "p_prime=0.5",
                              "--timeout", "10")
    gym = OpenGymInterface("aqm", AQM_OBS_SPACE, spaces.Box(0.0, 0.1, (1,), np.float64), port=port, timeout_s=10)
    try:
        gym.connect()
        with pytest.raises(ControlPointError, match=rf"control point 'aqm' at tcp://127.0.0.1:{port} sent action "
                                                    r"array\(\[0\.5\]\) outside the action space"):
            gym.step(aqm_vector(0.01), 0.0, {})
        gym.close(aqm_vector(0.01), 0.0, {}, reason="GameOver")
    finally:
        rc, stderr = finish(agent)
    assert rc == 0, stderr


def test_agent_dying_mid_run_is_reported_within_the_timeout() -> None:
    agent, port = start_serve("--control", "aqm", "--policy", "pi2", "--timeout", "10")
    gym = OpenGymInterface("aqm", AQM_OBS_SPACE, spaces.Discrete(17), port=port, timeout_s=1.0)
    try:
        gym.connect()
        for k in range(3):
            gym.step(aqm_vector(0.01 * k), 0.0, {})
        agent.kill()
        agent.wait(timeout=10)
        start = time.monotonic()
        with pytest.raises(ControlPointError, match=rf"the agent for control point 'aqm' at tcp://127.0.0.1:{port} "
                                                    rf"closed the connection while the simulation waited"):
            gym.step(aqm_vector(0.05), 0.0, {})
        assert time.monotonic() - start < 3.0
        assert not gym.connected
        gym.close(aqm_vector(0.0), 0.0, {})  # closing after the failure must not hang either
    finally:
        finish(agent)


def test_sigterm_leaves_a_valid_decisions_file(tmp_path: Path) -> None:
    agent, port = start_serve("--control", "aqm", "--policy", "pi2", "--out", str(tmp_path), "--timeout", "10")
    gym = OpenGymInterface("aqm", AQM_OBS_SPACE, spaces.Discrete(17), port=port, timeout_s=5)
    try:
        gym.connect()
        for k in range(5):
            gym.step(aqm_vector(0.004 * k), 1.0, {"sim_time_s": k})
        agent.send_signal(signal.SIGTERM)
        rc, stderr = finish(agent)
    finally:
        gym.close(aqm_vector(0.0), 0.0, {})
    assert rc == 128 + signal.SIGTERM, stderr
    table = pq.read_table(tmp_path / "decisions.parquet")
    assert table.column("step").to_pylist() == [0, 1, 2, 3, 4]
    assert table.column("sim_time_s").to_pylist() == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob(".*partial"))


def test_serve_cli_fails_with_a_one_line_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "agents", "serve", "--control", "aqm", "--policy", "pid",
                           "--port", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "unknown aqm policy 'pid'; known: " in errors[0]
    assert all(name in errors[0] for name in ("fixed", "pi2", "pie"))


# ---------------------------------------------------------------- the loop in process


class RecordingPolicy:
    """A shadow that records what the loop hands it (the optional observe_reward included)."""

    control = "aqm"

    def __init__(self) -> None:
        self.name = "recorder"
        self.events: list[tuple[str, float]] = []

    def reset(self) -> None:
        self.events.append(("reset", 0.0))

    def observe_reward(self, reward: float) -> None:
        self.events.append(("reward", reward))

    def act(self, obs: AqmObservation) -> float:
        self.events.append(("act", obs.qdelay_s))
        return 1.0

    def prepare(self) -> None:
        self.events.append(("prepare", 0.0))


def test_serve_hands_rewards_before_acting_and_logs_shadows(tmp_path: Path) -> None:
    recorder = RecordingPolicy()
    with OpenGymEnv(port=0, timeout_s=10) as env:
        env.launch([sys.executable, str(MINIMAL_SIM), "--port", str(env.port), "--steps", "3",
                    "--obs-size", str(AQM_SIZE), "--n-actions", "17"], env=SIM_ENV)
        result = serve(env, FixedProbability(0.0), shadows=[recorder], out_dir=tmp_path)
    assert (result.episodes, result.decisions) == (1, 3)
    # Rewards 0.5 * step arrive with each observation; the first one has no previous action to reward.
    assert recorder.events == [("reset", 0.0), ("act", 0.001), ("prepare", 0.0), ("reward", 0.5), ("act", 0.002),
                               ("prepare", 0.0), ("reward", 1.0), ("act", 0.003), ("prepare", 0.0), ("reward", 1.5)]
    rows = pq.read_table(result.decisions_path).to_pylist()
    assert [(r["policy"], r["role"], r["action"]) for r in rows] == [
        ("fixed", "acting", [0.0]), ("recorder", "shadow", [16.0])] * 3 + [("fixed", "acting", [])]


class SlowShadow:
    """A shadow that takes ``think_s`` per decision and notes when each decision was done."""

    control = "aqm"
    name = "slow"

    def __init__(self, think_s: float) -> None:
        self.think_s = think_s
        self.done_at: list[float] = []

    def reset(self) -> None:
        pass

    def act(self, obs: AqmObservation) -> float:
        time.sleep(self.think_s)
        self.done_at.append(time.monotonic())
        return 0.5


def test_acting_answer_arrives_before_a_slow_shadow_has_decided(tmp_path: Path) -> None:
    shadow = SlowShadow(think_s=0.3)
    steps = 3
    with OpenGymEnv(port=0, timeout_s=10) as env:
        results: list = []
        agent = threading.Thread(target=lambda: results.append(
            serve(env, Pi2Controller(), shadows=[shadow], out_dir=tmp_path)), daemon=True)
        agent.start()
        gym = OpenGymInterface("aqm", AQM_OBS_SPACE, spaces.Discrete(17), port=env.port, timeout_s=10)
        gym.connect()
        answered_at = []
        for k in range(steps):
            gym.step(aqm_vector(0.004 * k), 1.0, {"sim_time_s": 0.016 * k})
            answered_at.append(time.monotonic())
        gym.close(aqm_vector(0.0), 0.0, {})
        agent.join(timeout=10)
    assert results and results[0].decisions == steps
    # Each acting answer is out before the shadow has decided on the same state; the next state is read
    # only once the shadow is done (one decision at a time), so the answers keep pace with the shadow.
    for k in range(steps):
        assert answered_at[k] < shadow.done_at[k]
        if k:
            assert answered_at[k] > shadow.done_at[k - 1]
    # The log holds what it held before: per step the acting row, then the shadow's with its own time.
    rows = pq.read_table(results[0].decisions_path).to_pylist()
    assert [(r["step"], r["policy"], r["role"]) for r in rows] == [
        (k, name, role) for k in range(steps) for name, role in (("pi2", "acting"), ("slow", "shadow"))
    ] + [(steps, "pi2", "acting")]
    assert all(r["decision_ms"] >= 300 for r in rows if r["role"] == "shadow")
    assert all(r["decision_ms"] < 300 for r in rows[:-1] if r["role"] == "acting")


def test_the_llm_agent_slides_its_window_between_decisions(tmp_path: Path) -> None:
    """The shipped AQM policy (window 10, 5 steps kept) over 25 decisions: every slide of its window happens
    after an answer is out, none inside a decision."""
    from agents.llm_agent import LlmPolicy
    from llm.shipped import default_checkpoint

    policy = LlmPolicy("aqm", checkpoint=str(default_checkpoint("aqm")), device="cpu")
    with OpenGymEnv(port=0, timeout_s=30) as env:
        env.launch([sys.executable, str(MINIMAL_SIM), "--port", str(env.port), "--steps", "25",
                    "--obs-size", str(AQM_SIZE), "--n-actions", "17"], env=SIM_ENV)
        result = serve(env, policy, out_dir=tmp_path)
    session = policy.decider._session
    assert result.decisions == 25 and policy.decider.config.window == 10
    assert session.rebuilds == session.slides_prepared == 4  # after decisions 10, 15, 20 and 25


def test_serve_handles_a_simulation_that_ends_at_once(tmp_path: Path) -> None:
    with OpenGymEnv(port=0, timeout_s=10) as env:
        env.launch([sys.executable, str(MINIMAL_SIM), "--port", str(env.port), "--steps", "0",
                    "--obs-size", str(AQM_SIZE), "--n-actions", "17"], env=SIM_ENV)
        result = serve(env, Pi2Controller(), out_dir=tmp_path)
        assert env.last_state.game_over
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(0)
    assert result.decisions == 0
    rows = pq.read_table(result.decisions_path).to_pylist()
    assert [(r["step"], r["done"], r["action"]) for r in rows] == [(0, True, [])]


def test_aqm_grid_index_is_nearest_in_log_terms() -> None:
    grid = aqm_action_grid(17)
    assert [aqm_grid_index(p, 17) for p in grid] == list(range(17))
    assert aqm_grid_index(0.0, 17) == 0 and aqm_grid_index(-0.1, 17) == 0
    between = math.sqrt(grid[5] * grid[6])  # the log midpoint
    assert aqm_grid_index(between * 0.99, 17) == 5 and aqm_grid_index(between * 1.01, 17) == 6
    half_step_below = grid[1] / math.sqrt(grid[2] / grid[1])
    assert aqm_grid_index(half_step_below * 1.01, 17) == 1 and aqm_grid_index(half_step_below * 0.99, 17) == 0
    assert aqm_grid_index(2.0, 17) == 16
    with pytest.raises(ValueError, match="NaN"):
        aqm_grid_index(math.nan, 17)


def test_actions_follow_the_action_space() -> None:
    box = spaces.Box(0.0, 1.0, (1,), np.float32)
    action = to_space_action("aqm", 0.25, box)
    assert action.dtype == np.float32 and action.tolist() == [0.25]
    assert to_space_action("abr", np.int64(4), spaces.Discrete(6)) == 4
    assert to_space_action("aqm", 1.0, spaces.Discrete(17)) == 16


def test_obs_fields_follow_the_control_point_layouts() -> None:
    assert obs_fields("aqm", AQM_OBS_SPACE) == AqmObservation.field_names()
    abr_size = AbrObservation.vector_size(4)
    assert obs_fields("abr", spaces.Box(0, np.inf, (abr_size,), np.float64)) == AbrObservation.field_names(4)
    with pytest.raises(ValueError, match="not an AQM observation"):
        obs_fields("aqm", spaces.Box(0, 1, (4,), np.float64))
