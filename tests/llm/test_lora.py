"""LoRA wiring: only adapters and our modules train; the LM's weights never move."""

from __future__ import annotations

import pytest
import torch

from llm.backbone import load_backbone
from llm.features import feature_spec
from llm.lora import LoraSettings, apply_lora
from llm.policy import DecisionTransformerPolicy
from tests.llm.synthetic import abr_fields


def _policy(tiny_backbone, arch="llama"):
    lm = apply_lora(load_backbone(tiny_backbone(arch)), LoraSettings(rank=4, alpha=8))
    spec = feature_spec("abr", abr_fields())
    return DecisionTransformerPolicy(lm, spec.tokens, n_actions=4, max_timestep=50, window=4, channels=8), spec


@pytest.mark.parametrize(("arch", "target"), [("llama", "q_proj"), ("gpt2", "c_attn"), ("opt", "v_proj")])
def test_only_adapter_and_policy_modules_train(tiny_backbone, arch, target):
    policy, _ = _policy(tiny_backbone, arch)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    lm_trainable = {n for n in trainable if n.startswith("backbone.")}
    assert lm_trainable and all(".lora_" in n for n in lm_trainable)
    assert any(target in n for n in lm_trainable)
    ours = {n.split(".")[0] for n in trainable if not n.startswith("backbone.")}
    assert ours == {"encoders", "return_embed", "action_embed", "timestep_embed", "embed_ln", "head"}
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.") and ".lora_" not in n for n in frozen)


def test_training_step_moves_adapters_but_not_the_lm(tiny_backbone):
    policy, spec = _policy(tiny_backbone)
    policy.train()
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
    b, k = 2, 4
    for _ in range(2):  # LoRA B starts at zero, so A only moves from the second step
        loss, _ = policy.loss(
            torch.rand(b, k),
            torch.randn(b, k, spec.n_values),
            torch.randint(0, 4, (b, k)),
            torch.arange(k).expand(b, k),
            torch.ones(b, k, dtype=torch.bool),
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in policy.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        if param.requires_grad:
            assert changed, f"{name} did not train"
        else:
            assert not changed, f"frozen {name} moved"


def test_unknown_architecture_needs_explicit_targets():
    settings = LoraSettings()
    assert settings.targets_for("qwen2") == ["q_proj", "v_proj"]
    assert LoraSettings(target_modules=["k_proj"]).targets_for("bert") == ["k_proj"]
    with pytest.raises(ValueError, match="pass target_modules"):
        settings.targets_for("bert")
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(rank=0)
