"""Our layer loop equals the library's forward, caches and ragged batches change nothing, and each lever's
forward equals its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm.backbone import load_backbone, tiny_backbone_dir
from llm.engine import Decoder, LeverModules, Levers
from llm.inference import LlmDecider, decide_batch
from tests.llm.synthetic import abr_fields, abr_rows

HIDDEN, BLOCKS = 32, 4


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def lm(request, tmp_path_factory):
    path = tiny_backbone_dir(tmp_path_factory.mktemp(request.param), arch=request.param, hidden=HIDDEN,
                             layers=BLOCKS, heads=4)
    return load_backbone(path)


def _inputs(b: int = 2, n: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.randn(b, n, HIDDEN), torch.arange(n).expand(b, n)


def _library(lm, x, pos, hidden_states: bool = False):
    out = lm.model(inputs_embeds=x, position_ids=pos, output_hidden_states=hidden_states)
    return out


@torch.no_grad()
def test_layer_loop_equals_the_library_forward_fused_cached_and_ragged(lm):
    x, pos = _inputs()
    reference = _library(lm, x, pos).last_hidden_state
    decoder = Decoder(lm)
    torch.testing.assert_close(decoder.forward(x, pos).hidden, reference, atol=1e-5, rtol=1e-4)
    decoder.fuse()
    torch.testing.assert_close(decoder.forward(x, pos).hidden, reference, atol=1e-5, rtol=1e-4)
    # the same tokens in two steps through a KV cache
    kvs = [decoder.new_kv(32) for _ in range(2)]
    first = decoder.forward(x[:, :5], pos[:, :5], kvs).hidden
    second = decoder.forward(x[:, 5:], pos[:, 5:], kvs).hidden
    torch.testing.assert_close(torch.cat([first, second], 1), reference, atol=1e-5, rtol=1e-4)
    # two streams holding different lengths step together in one batch
    a, b = decoder.new_kv(32), decoder.new_kv(32)
    decoder.forward(x[:1, :6], pos[:1, :6], [a])
    decoder.forward(x[1:, :2], pos[1:, :2], [b])
    both = decoder.forward(torch.stack([x[0, 6:9], x[1, 2:5]]), torch.stack([pos[0, 6:9], pos[1, 2:5]]), [a, b])
    torch.testing.assert_close(both.hidden[0], reference[0, 6:9], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both.hidden[1], reference[1, 2:5], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="full"):
        decoder.forward(x[:1, :9], pos[:1, :9], [decoder.new_kv(4)])


def _levers(lm, **kw) -> tuple[Decoder, LeverModules]:
    levers = Levers(**kw)
    modules = LeverModules(levers, BLOCKS, HIDDEN, HIDDEN // 4, n_actions=3)
    return Decoder(lm, levers, modules), modules


@torch.no_grad()
def test_open_gates_are_the_full_model_and_closed_gates_skip_their_blocks(lm):
    x, pos = _inputs()
    states = _library(lm, x, pos, hidden_states=True).hidden_states  # input of block i is states[i]
    decoder, modules = _levers(lm, gates=True, gate_start=2)
    torch.testing.assert_close(decoder.forward(x, pos).hidden, _library(lm, x, pos).last_hidden_state,
                               atol=1e-5, rtol=1e-4)  # routers start at "execute"
    for router in modules.routers.values():
        router.out.bias.copy_(torch.tensor([5.0, -5.0]))  # always skip
    out = decoder.forward(x, pos)
    torch.testing.assert_close(out.hidden, lm.model.norm(states[2]), atol=1e-5, rtol=1e-4)
    assert torch.all(out.exec_ratio == 0)
    # a skipped token leaves no key behind in the gated blocks
    kv = decoder.new_kv(16)
    decoder.forward(x[:1], pos[:1], [kv])
    assert kv.valid[:2, :9].all() and not kv.valid[2:, :9].any()


@torch.no_grad()
def test_tokens_that_skip_a_block_are_not_computed_and_change_nothing(lm):
    """Mixed per-token gates: one stream (skipped tokens left out of the block's computation) equals the
    same stream computed whole and masked (in a batch of two), over two cached steps."""
    x, pos = _inputs(b=1, n=18)
    decoder, modules = _levers(lm, gates=True, gate_start=1)
    for router in modules.routers.values():  # route by the sign of one router unit: a mix of run and skip
        router.out.weight.zero_()
        router.out.bias.zero_()
        router.out.weight[1, 0], router.out.weight[0, 0] = 4.0, -4.0
    alone, paired = decoder.new_kv(32), [decoder.new_kv(32), decoder.new_kv(32)]
    for part in (slice(0, 9), slice(9, 18)):
        step, at = x[:, part], pos[:, part]
        single = decoder.forward(step, at, [alone])
        double = decoder.forward(step.expand(2, -1, -1), at.expand(2, -1), paired)
        assert 0 < float(single.exec_ratio.mean()) < 1
        torch.testing.assert_close(single.hidden[0], double.hidden[0], atol=1e-5, rtol=1e-4)
    assert torch.equal(alone.valid[:, :18], paired[0].valid[:, :18])
    assert not alone.valid[1:, :18].all()


@torch.no_grad()
def test_a_concurrent_group_is_the_explicit_sum_of_its_members(lm):
    x, pos = _inputs()
    states = _library(lm, x, pos, hidden_states=True).hidden_states
    decoder, _ = _levers(lm, concurrent=[[1, 2]])
    h1 = states[1]  # input of block 1
    cos, sin = lm.model.rotary_emb(h1, pos)
    mask = torch.full((9, 9), float("-inf")).triu(1)[None, None]
    blocks = lm.model.layers
    f1 = blocks[1](h1, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
    f2 = blocks[2](h1, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
    group = h1 + (f1 - h1) + (f2 - h1)
    after = blocks[3](group, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
    torch.testing.assert_close(decoder.forward(x, pos).hidden, lm.model.norm(after), atol=1e-5, rtol=1e-4)
    decoder.fuse()
    torch.testing.assert_close(decoder.forward(x, pos).hidden, lm.model.norm(after), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_early_exit_stops_at_the_exit_and_keeps_the_cache_complete(lm):
    x, pos = _inputs(b=1)
    states = _library(lm, x, pos, hidden_states=True).hidden_states
    decoder, _ = _levers(lm, exit_layers=[2])
    kv = decoder.new_kv(16)
    out = decoder.forward(x, pos, [kv], exit_check=lambda depth, normed: True)
    assert out.blocks_run == 2
    torch.testing.assert_close(out.hidden, lm.model.norm(states[2]), atol=1e-5, rtol=1e-4)
    assert kv.valid[:, :9].all() and kv.k[3, :, :9].abs().sum() > 0  # skipped blocks got keys of the exit state
    collected = decoder.forward(x, pos, collect_exits=True)
    torch.testing.assert_close(collected.exit_hidden[2], lm.model.norm(states[2]), atol=1e-5, rtol=1e-4)
    assert collected.blocks_run == BLOCKS


@torch.no_grad()
def test_richer_heads_start_as_the_pretrained_function(lm):
    x, pos = _inputs()
    decoder, modules = _levers(lm, head_mlp=True)
    torch.testing.assert_close(decoder.forward(x, pos).hidden, _library(lm, x, pos).last_hidden_state,
                               atol=1e-5, rtol=1e-4)
    torch.nn.init.normal_(modules.head_mlps["0"].weight)
    assert not torch.allclose(decoder.forward(x, pos).hidden, _library(lm, x, pos).last_hidden_state, atol=1e-3)


def test_levers_are_checked():
    for bad in (dict(exit_layers=[4]), dict(exit_layers=[2, 1]), dict(concurrent=[[1]]), dict(concurrent=[[1, 3]]),
                dict(concurrent=[[0, 1], [1, 2]]), dict(gates=True, concurrent=[[0, 1]]), dict(gate_target=0.0),
                dict(exit_confidence="entropy")):
        with pytest.raises(ValueError):
            Levers(**bad).check(BLOCKS)


def test_a_batch_of_streams_decides_as_each_would_alone(trained_checkpoint):
    episodes = []
    for seed in range(3):
        rows = abr_rows(9 + 3 * seed, seed=seed)  # different lengths: the streams' caches differ
        episodes.append([(dict(zip(abr_fields(), r["obs"].tolist(), strict=True)), r["reward"]) for r in rows])
    alone = []
    for episode in episodes:
        decider = LlmDecider.from_checkpoint(trained_checkpoint[0], device="cpu")
        alone.append([decider.decide(o, r) for o, r in episode])
    first = LlmDecider.from_checkpoint(trained_checkpoint[0], device="cpu")
    deciders = [first, first.fork(), first.fork()]  # one model, three streams
    together: list[list[int]] = [[] for _ in episodes]
    for t in range(max(len(e) for e in episodes)):
        live = [i for i, e in enumerate(episodes) if t < len(e)]
        actions = decide_batch([deciders[i] for i in live], [episodes[i][t][0] for i in live],
                               [episodes[i][t][1] for i in live])
        for i, a in zip(live, actions, strict=True):
            together[i].append(a)
    assert together == alone
    assert np.all(np.asarray(deciders[0].latency_ms) > 0)
