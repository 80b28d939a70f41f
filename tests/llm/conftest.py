"""Fixtures for the LLM tests: one CPU thread, no hub, tiny backbones built from configs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
torch.set_num_threads(1)  # the machine's two cores are shared


def pytest_configure(config):
    # peft calls a transformers method deprecated in 5.x; not ours to fix
    config.addinivalue_line("filterwarnings", "ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """``tiny_backbone(arch)`` -> a saved tiny model directory of that architecture (built once per session)."""
    from llm.backbone import tiny_backbone_dir

    root = tmp_path_factory.mktemp("tiny-backbones")
    built: dict[str, object] = {}

    def get(arch: str = "llama"):
        if arch not in built:
            built[arch] = tiny_backbone_dir(root / arch, arch=arch, hidden=32, layers=2, heads=4)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def abr_pools(tmp_path_factory):
    """(training pool dir, validation pool dir) of synthetic ABR episodes that follow a buffer rule."""
    from llm.pool import build_pool
    from tests.llm.synthetic import abr_fields, abr_rows, write_decisions

    root = tmp_path_factory.mktemp("abr-pools")
    train = [write_decisions(root / f"train{i}.parquet", "abr", abr_fields(), abr_rows(24, seed=i)) for i in range(4)]
    val = [write_decisions(root / "val.parquet", "abr", abr_fields(), abr_rows(24, seed=100))]
    build_pool(train, root / "train", "abr")
    build_pool(val, root / "val", "abr")
    return root / "train", root / "val"


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, abr_pools, tiny_backbone):
    """(checkpoint dir, training summary) of a short run on the synthetic ABR pool with a tiny llama."""
    from llm.lora import LoraSettings
    from llm.train import TrainSettings, adapt

    out = tmp_path_factory.mktemp("ckpt") / "abr"
    settings = TrainSettings(
        epochs=50,
        batch_size=8,
        grad_accum=1,
        lr=3e-3,
        warmup_fraction=0.1,
        window=4,
        stride=2,
        channels=16,
        eval_every=10,
        patience=100,
        max_steps=60,
        log_every=20,
        lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
    )
    summary = adapt(
        abr_pools[0], out, backbone=str(tiny_backbone("llama")), val_pool_dir=abr_pools[1], settings=settings
    )
    return out, summary
