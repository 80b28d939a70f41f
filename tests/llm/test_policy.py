"""Step-by-step decisions with a KV cache equal full-window forwards, across window slides and batches."""

from __future__ import annotations

import pytest
import torch

from llm.backbone import load_backbone
from llm.features import TokenSpec
from llm.lora import LoraSettings, apply_lora
from llm.policy import DecisionSession, DecisionTransformerPolicy, amortised_tokens_per_decision

TOKENS = [TokenSpec("group", "scalar", 3, "identity"), TokenSpec("history", "series", 6, "identity")]
N_VALUES = 9
N_ACTIONS = 5
WINDOW = 5


def _policy(tiny_backbone, arch: str) -> DecisionTransformerPolicy:
    torch.manual_seed(0)
    lm = apply_lora(load_backbone(tiny_backbone(arch)), LoraSettings(rank=4, alpha=8))
    for name, param in lm.named_parameters():  # non-zero adapters, so they take part in the comparison
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return DecisionTransformerPolicy(lm, TOKENS, N_ACTIONS, max_timestep=30, window=WINDOW, channels=8).eval()


def _expected_contexts(n_steps: int, keep: int) -> list[range]:
    """Which steps the context should hold at each decision, derived from the documented slide rule."""
    contexts, start = [], 0
    for t in range(n_steps):
        if t - start == WINDOW:
            start = t - keep
        contexts.append(range(start, t + 1))
    return contexts


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "qwen2"])
@pytest.mark.parametrize("keep", [WINDOW - 1, 2])
@pytest.mark.parametrize("prepared", [False, True], ids=["slide-in-step", "slide-prepared"])
def test_cached_steps_equal_full_window_forward(tiny_backbone, arch, keep, prepared):
    """Also when the agent slides a full window between decisions (``prepare``), off the decision's path."""
    policy = _policy(tiny_backbone, arch)
    batch, n_steps = 3, 14
    gen = torch.Generator().manual_seed(1)
    returns = torch.rand(batch, n_steps, generator=gen)
    states = torch.randn(batch, n_steps, N_VALUES, generator=gen)
    actions = torch.randint(0, N_ACTIONS, (batch, n_steps), generator=gen)
    timesteps = torch.arange(n_steps).expand(batch, n_steps)
    session = DecisionSession(policy, batch_size=batch, keep_steps=keep)
    contexts = _expected_contexts(n_steps, keep)
    for t, context in enumerate(contexts):
        logits = session.step(returns[:, t], states[:, t], timesteps[:, t], actions[:, t - 1] if t else None)
        idx = list(context)
        with torch.no_grad():
            full = policy(returns[:, idx], states[:, idx], actions[:, idx], timesteps[:, idx])[:, -1]
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-4)
        assert session.context_steps == len(idx)
        if prepared:
            slid = session.prepare(actions[:, t])
            assert slid == (len(context) == WINDOW)  # the next context starts over from the kept steps
    slides = sum(1 for before, now in zip(contexts[:-1], contexts[1:], strict=True) if now.start != before.start)
    assert session.rebuilds == slides + (prepared and len(contexts[-1]) == WINDOW) > 0


def test_uncached_session_slides_one_step_at_a_time(tiny_backbone):
    policy = _policy(tiny_backbone, "llama")
    cached = DecisionSession(policy, keep_steps=WINDOW - 1)
    uncached = DecisionSession(policy, use_cache=False)
    prev = None
    for t in range(9):
        r, s, ts = torch.rand(1), torch.randn(1, N_VALUES), torch.tensor([t])
        torch.testing.assert_close(cached.step(r, s, ts, prev), uncached.step(r, s, ts, prev), atol=1e-5, rtol=1e-4)
        prev = torch.tensor([t % N_ACTIONS])
    assert uncached.context_steps == WINDOW


def test_session_rejects_inconsistent_actions(tiny_backbone):
    policy = _policy(tiny_backbone, "llama")
    session = DecisionSession(policy)
    state = (torch.rand(1), torch.randn(1, N_VALUES), torch.tensor([0]))
    with pytest.raises(ValueError, match="no previous action"):
        session.step(*state, torch.tensor([1]))
    session.step(*state, None)
    with pytest.raises(ValueError, match="prev_actions is required"):
        session.step(*state, None)
    with pytest.raises(ValueError, match="keep_steps"):
        DecisionSession(policy, keep_steps=WINDOW)


def test_forward_refuses_windows_longer_than_trained(tiny_backbone):
    policy = _policy(tiny_backbone, "llama")
    k = WINDOW + 1
    with pytest.raises(ValueError, match=f"at most {WINDOW} steps"):
        policy(torch.zeros(1, k), torch.zeros(1, k, N_VALUES), torch.zeros(1, k, dtype=torch.long), torch.zeros(1, k))


def test_amortised_cost_of_the_slide():
    assert amortised_tokens_per_decision(8, 20, 19) == 8 * 20  # exact slide: a full window per decision
    assert amortised_tokens_per_decision(8, 20, 10) == 16
