"""The agent-facing decider: decisions by field name, return bookkeeping, latency, AQM action values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm.features import p_prime_grid
from llm.inference import LlmDecider, resolve_device
from tests.llm.synthetic import abr_fields, abr_rows, aqm_fields, aqm_rows


def _episode(n_steps: int, seed: int) -> list[tuple[dict[str, float], float]]:
    rows = abr_rows(n_steps, seed=seed)
    return [(dict(zip(abr_fields(), r["obs"].tolist(), strict=True)), r["reward"]) for r in rows]


def test_decisions_match_a_full_forward_with_decision_transformer_returns(trained_checkpoint):
    decider = LlmDecider.from_checkpoint(trained_checkpoint[0], device="cpu", dtype="float32", merge_lora=False)
    policy, config = decider.policy, decider.config
    spec, scale = config.features, config.rewards
    episode = _episode(7, seed=5)
    target = scale.start_return
    returns, states, actions, start = [], [], [], 0
    for t, (obs, reward) in enumerate(episode):
        action = decider.decide(obs, reward)
        if t:
            target -= float(scale.scale_rewards(reward))
        returns.append(target / scale.return_divisor)
        vec = np.array([obs[n] for n in spec.obs_fields])[None]
        states.append(spec.normalise(spec.raw_features(vec))[0])
        actions.append(action)
        if t - start == config.window:  # the documented slide: keep the last window // 2 steps
            start = t - config.window // 2
        with torch.no_grad():
            logits = policy(
                torch.tensor([returns[start:]]),
                torch.tensor(np.stack(states[start:]))[None],
                torch.tensor([actions[start:]]),
                torch.arange(start, t + 1)[None],
            )[0, -1]
        assert action == int(logits.argmax())
    assert start > 0
    assert len(decider.latency_ms) == 7 and all(ms > 0 for ms in decider.latency_ms)
    assert decider.action_values is None and decider.n_actions == 4 and decider.task == "abr"

    decider.reset()
    again = [decider.decide(obs, reward) for obs, reward in episode]
    assert again == actions


def test_merged_lora_decides_like_the_adapter(trained_checkpoint):
    episode = _episode(9, seed=6)
    plain = LlmDecider.from_checkpoint(trained_checkpoint[0], device="cpu", merge_lora=False)
    merged = LlmDecider.from_checkpoint(trained_checkpoint[0], device="cpu", merge_lora=True)
    assert [plain.decide(o, r) for o, r in episode] == [merged.decide(o, r) for o, r in episode]


def test_sampling_is_seeded(trained_checkpoint):
    episode = _episode(9, seed=7)
    runs = []
    for _ in range(2):
        decider = LlmDecider.from_checkpoint(trained_checkpoint[0], device="cpu", greedy=False, seed=3)
        runs.append([decider.decide(o, r) for o, r in episode])
    assert runs[0] == runs[1] and all(0 <= a < 4 for a in runs[0])


def test_untrained_aqm_decider_exposes_the_p_prime_grid(tiny_backbone):
    decider = LlmDecider.untrained("aqm", tiny_backbone("qwen2"), 9, obs_fields=aqm_fields(), window=6, device="cpu")
    np.testing.assert_allclose(decider.action_values, p_prime_grid(9))
    for row in aqm_rows(15, seed=1):  # past a window slide
        obs = dict(zip(aqm_fields(), row["obs"].tolist(), strict=True))
        obs["extra_field"] = 1.0  # extra keys are ignored
        assert 0 <= decider.decide(obs, row["reward"]) < 9
    assert len(decider.latency_ms) == 15
    with pytest.raises(KeyError, match="qdelay_s"):
        decider.decide({"p_prime": 0.1}, 0.0)


def test_auto_device_falls_back_to_cpu_float32():
    device, dtype = resolve_device("auto", "auto")
    if torch.cuda.is_available():
        assert (device.type, dtype) == ("cuda", torch.bfloat16)
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)
    assert resolve_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)


def test_bfloat16_decider_runs_the_reduced_precision_path(trained_checkpoint):
    """The dtype CUDA gets by default, exercised on CPU: every module in bf16, decisions still valid."""
    decider = LlmDecider.from_checkpoint(trained_checkpoint[0], device="cpu", dtype="bfloat16")
    assert decider.policy.param_dtype == torch.bfloat16
    assert next(decider.policy.backbone.parameters()).dtype == torch.bfloat16
    assert all(0 <= decider.decide(o, r) < 4 for o, r in _episode(6, seed=8))
