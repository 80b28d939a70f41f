"""Decision delay in simulated time, with real simulation processes and real agents over real sockets:
a fixed delay shifts the queue's p' by exactly that much, ``measured`` applies each decision after its
own round trip, a video request leaves the delay after its decision, and the CLI sets and checks it."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from agents.env import OpenGymEnv
from testbed.cli import build_parser
from testbed.runner import ExternalAgent, run_config, with_agents, with_decision_delays
from testbed.scenario import load_scenario

#: p' the open-loop agent answers, by step: its answers do not depend on what it sees, so runs that
#: differ only in the decision delay get the same answers, and p' over time differs only by the shift.
P_SEQUENCE = [0.0, 0.02, 0.05, 0.1, 0.03, 0.2]
PROBE_MS = 4


def _open_loop_agent(env: OpenGymEnv, answered: list[int]) -> None:
    env.reset()
    step, done = 0, False
    while not done:
        _obs, _reward, done, _truncated, _info = env.step(np.array([P_SEQUENCE[step % len(P_SEQUENCE)]]))
        step += 1
    answered.append(step)


def _p_prime_series(tmp_path, delay) -> tuple[np.ndarray, dict]:
    config = load_scenario("l4s-coexistence", {
        "duration_s": 2, "probes.warmup_s": 0.5, "probes.interval_ms": PROBE_MS, "bottleneck.rate_mbps": 10,
        # Every 4th Tupdate (64 ms): longer than the delay, so no tick comes while a decision is pending.
        "control.aqm": {"every_k": 4, "decision_delay": delay},
    })
    env = OpenGymEnv(port=0, timeout_s=30, connect_timeout_s=60)
    answered: list[int] = []
    agent = threading.Thread(target=_open_loop_agent, args=(env, answered), daemon=True)
    agent.start()
    try:
        wired, agents = with_agents(config, ExternalAgent("127.0.0.1", env.port), None)
        result = run_config(wired, tmp_path / str(delay), agents=agents)
        agent.join(timeout=30)
    finally:
        env.close()
    assert result.status == "ok", result.error
    assert answered and answered[0] > 20
    queue = pd.read_parquet(result.run_dir / "queue.parquet")
    return queue["p_prime"].to_numpy(), result.summary


def test_fixed_decision_delay_shifts_the_queue_p_prime_series_by_the_delay(tmp_path):
    at_once, summary_none = _p_prime_series(tmp_path, "none")
    delayed, summary_32 = _p_prime_series(tmp_path, 32)
    shift = 32 // PROBE_MS
    assert len(set(at_once.tolist())) >= len(set(P_SEQUENCE)) - 1  # p' really moves
    np.testing.assert_array_equal(delayed[shift:], at_once[:-shift])
    np.testing.assert_array_equal(delayed[:shift], 0.0)
    assert not np.array_equal(delayed, at_once)
    assert summary_none["control"]["aqm"]["decision_delay"] == "none"
    aqm = summary_32["control"]["aqm"]
    assert aqm["decision_delay"] == 32.0 and aqm["ticks_skipped"] == 0
    assert aqm["decision_delay_ms_p50"] == pytest.approx(32.0) and aqm["decision_delay_ms_max"] == pytest.approx(32.0)
    actions = pd.read_parquet(tmp_path / "32" / "actions.parquet")
    assert list(actions["step"]) == list(range(aqm["steps"]))
    np.testing.assert_allclose(actions["effect_time_s"] - actions["state_time_s"], 0.032, atol=1e-9)
    np.testing.assert_array_equal(actions["action"], [P_SEQUENCE[k % len(P_SEQUENCE)] for k in actions["step"]])


def test_measured_delay_applies_each_pi2_decision_after_its_round_trip(tmp_path):
    config = load_scenario("l4s-coexistence", {"duration_s": 1.5, "probes.warmup_s": 0.5, "bottleneck.rate_mbps": 20})
    wired, agents = with_agents(config, "pi2", None)
    wired = with_decision_delays(wired, {"aqm": "measured"})
    result = run_config(wired, tmp_path, agents=agents)
    assert result.status == "ok", result.error
    actions = pd.read_parquet(tmp_path / "actions.parquet")
    delay_ms = actions["decision_delay_ms"].to_numpy()
    # Each action took effect its own wall-clock round trip after its state (simulated time is in ns).
    np.testing.assert_allclose(delay_ms, actions["wait_us"] / 1e3, atol=1e-5)
    assert (delay_ms > 0).all() and len(set(delay_ms.round(6))) > 1
    # What took effect is what the agent decided, for the state it decided on.
    decisions = pd.read_parquet(tmp_path / "agents" / "aqm" / "decisions.parquet")
    acting = decisions[(decisions["role"] == "acting") & ~decisions["done"]].set_index("step")
    np.testing.assert_allclose(acting.loc[actions["step"], "sim_time_s"], actions["state_time_s"])
    np.testing.assert_allclose([a[0] for a in acting.loc[actions["step"], "action"]], actions["action"])
    aqm = result.summary["control"]["aqm"]
    assert aqm["decision_delay"] == "measured" and aqm["steps"] == len(actions)
    assert aqm["decision_delay_ms_max"] == pytest.approx(delay_ms.max())
    # A tick that came while a decision was pending was skipped: every Tupdate tick is accounted for.
    assert aqm["steps"] + aqm["ticks_skipped"] == int(1.5 / 0.016)


def test_video_request_leaves_the_decision_delay_after_its_decision(tmp_path):
    config = load_scenario("l4s-coexistence", {
        "duration_s": 8, "probes.warmup_s": 1, "bottleneck.rate_mbps": 20,
        "flows": [{"name": "bulk", "kind": "classic", "rtt_ms": 20}],
        "video": [{"name": "v", "rtt_ms": 20, "n_chunks": 4}],
    })
    wired, agents = with_agents(config, None, "bba")
    result = run_config(with_decision_delays(wired, {"abr": 250}), tmp_path, agents=agents)
    assert result.status == "ok", result.error
    video = pd.read_parquet(tmp_path / "video.parquet")
    assert len(video) == 4
    # Chunk k's request waits for its decision: 250 ms after chunk k-1 arrived (plus any full-buffer wait).
    idle_s = video["request_s"].to_numpy()[1:] - video["last_byte_s"].to_numpy()[:-1] - video["wait_s"].to_numpy()[1:]
    np.testing.assert_allclose(idle_s, 0.25, atol=1e-9)
    actions = pd.read_parquet(tmp_path / "actions.parquet")
    np.testing.assert_allclose(actions["effect_time_s"], video["request_s"].to_numpy()[1:], atol=1e-9)
    np.testing.assert_array_equal(actions["action"], video["quality"].to_numpy()[1:])
    abr = result.summary["control"]["abr-v"]
    assert abr["decision_delay"] == 250.0 and abr["decision_delay_ms_p50"] == pytest.approx(250.0)


def test_decision_delay_option_is_checked_before_anything_runs():
    parser = build_parser()
    args = parser.parse_args(["run", "l4s-coexistence", "--aqm", "pi2", "--decision-delay", "aqm=12",
                              "--decision-delay", "abr=measured"])
    assert args.decision_delay == [("aqm", 12.0), ("abr", "measured")]
    for bad in ("aqm=-1", "aqm=fast", "aqm", "queue=3", "abr=inf"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "l4s-coexistence", "--decision-delay", bad])
    config = load_scenario("l4s-coexistence", {"duration_s": 2})
    with pytest.raises(ValueError, match=r"--decision-delay aqm=12: this run has no aqm agent \(choose one with --aqm\)"):
        with_decision_delays(config, {"aqm": 12.0})
    wired, _ = with_agents(config, "pi2", None)
    assert with_decision_delays(wired, {"aqm": 12.0}).control.aqm.decision_delay == 12.0
    real = load_scenario("l4s-coexistence", {"duration_s": 2, "emulation.mode": "real"})
    with pytest.raises(ValueError, match="do not apply in real mode"):
        with_decision_delays(with_agents(real, "pi2", None)[0], {"aqm": 12.0})
