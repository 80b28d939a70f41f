"""Training reduces the loss, keeps the best checkpoint by validation, and checkpoints reload exactly."""

from __future__ import annotations

import json

import numpy as np
import torch

from llm.__main__ import main
from llm.backbone import load_backbone
from llm.lora import LoraSettings, apply_lora
from llm.policy import PolicyConfig, build_policy
from llm.pool import load_pool
from llm.train import (
    BASE_ADAPTER_DIR,
    CONFIG_FILE,
    WEIGHTS_FILE,
    TrainSettings,
    adapt,
    load_policy,
    save_checkpoint,
    window_batch,
)
from tests.llm.synthetic import abr_fields, abr_rows, aqm_fields, aqm_rows, write_decisions


def test_training_reduces_the_loss_and_keeps_the_best_checkpoint(trained_checkpoint):
    ckpt, summary = trained_checkpoint
    assert summary["optimizer_steps"] == 60
    assert summary["final_train_loss"] < 0.7 * summary["initial_train_loss"]
    assert summary["final_train_accuracy"] > summary["initial_train_accuracy"]
    history = summary["validation_history"]
    assert [h["step"] for h in history] == [10, 20, 30, 40, 50, 60]
    best = min(history, key=lambda h: h["loss"])
    assert summary["best_validation"] == best
    for name in (CONFIG_FILE, WEIGHTS_FILE, "adapter_config.json", "adapter_model.safetensors"):
        assert (ckpt / name).is_file()
    config = json.loads((ckpt / CONFIG_FILE).read_text())
    assert config["task"] == "abr" and config["n_actions"] == 4 and config["window"] == 4
    assert config["features"]["obs_fields"] == abr_fields() and len(config["features"]["std"]) > 0
    assert config["training"]["best_validation"] == best


def _batch(pool_dir, policy_config, window=4):
    pool = load_pool(pool_dir)
    flat = pool.flat(policy_config.features, policy_config.rewards, policy_config.max_timestep)
    data = {k: torch.from_numpy(v) for k, v in flat.items()}
    return window_batch(data, torch.tensor([0, 5, 30]), window)


def test_checkpoint_reloads_to_identical_outputs(tmp_path, abr_pools, tiny_backbone, trained_checkpoint):
    _, trained_config = load_policy(trained_checkpoint[0])
    config = PolicyConfig(**{**trained_config.__dict__, "backbone": str(tiny_backbone("gpt2")), "channels": 8})
    lm = apply_lora(load_backbone(tiny_backbone("gpt2")), LoraSettings(rank=4, alpha=8))
    policy = build_policy(config, lm).train()
    batch = _batch(abr_pools[0], config)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # move the adapters off their zero start
        policy.loss(**batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()
    save_checkpoint(policy, config, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "README.md").exists()  # no blank Hugging Face card
    adapter = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == config.backbone  # what the checkpoint loads, not a scratch dir
    inputs = {k: v for k, v in batch.items() if k not in ("mask", "history_actions")}
    with torch.no_grad():
        expected = policy(**inputs)
        reloaded, reloaded_config = load_policy(tmp_path / "ckpt")
        assert torch.equal(reloaded(**inputs), expected)
        merged, _ = load_policy(tmp_path / "ckpt", merge_lora=True)
        torch.testing.assert_close(merged(**inputs), expected, atol=1e-5, rtol=1e-4)
    assert reloaded_config.to_dict() == config.to_dict()


def test_early_stopping_without_improvement(tmp_path, abr_pools):
    settings = TrainSettings(
        lr=0.0, grad_accum=1, window=4, stride=4, channels=8, eval_every=1, patience=2, lora=LoraSettings(rank=2)
    )
    lines: list[str] = []
    summary = adapt(
        abr_pools[0], tmp_path / "ckpt", backbone="tiny", val_pool_dir=abr_pools[1], settings=settings, log=lines.append
    )
    assert summary["optimizer_steps"] == 3  # best at step 1, then two passes without gain
    assert summary["best_validation"]["step"] == 1
    assert any("no gain 2/2" in line for line in lines)
    config = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert config["backbone"] == "backbone"  # the tiny backbone travels inside the checkpoint
    load_policy(tmp_path / "ckpt")


def test_cli_builds_a_pool_and_adapts(tmp_path, capsys):
    files = [write_decisions(tmp_path / f"d{i}.parquet", "abr", abr_fields(), abr_rows(10, seed=i)) for i in range(3)]
    assert main(["pool", "--task", "abr", *map(str, files), "--out", str(tmp_path / "pool")]) == 0
    assert "3 episodes, 27 steps" in capsys.readouterr().out
    args = ["adapt", "--pool", str(tmp_path / "pool"), "--out", str(tmp_path / "ckpt"), "--backbone", "tiny"]
    args += ["--max-steps", "2", "--window", "4", "--grad-accum", "1", "--lora-rank", "2", "--eval-every", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "validation step 2" in out and '"optimizer_steps": 2' in out
    assert (tmp_path / "ckpt" / WEIGHTS_FILE).is_file()


def test_levers_train_and_a_distilled_concurrent_group_reloads(tmp_path, abr_pools, tiny_backbone, trained_checkpoint):
    from llm.inference import LlmDecider

    base = dict(grad_accum=1, window=4, stride=2, channels=16, max_steps=6, eval_every=3, patience=5,
                lora=LoraSettings(rank=2, alpha=4, dropout=0.0))
    settings = TrainSettings(**base, levers={"exit_layers": [1], "gates": True, "gate_start": 1, "gate_target": 0.5})
    summary = adapt(abr_pools[0], tmp_path / "levers", backbone=str(tiny_backbone("llama")),
                    val_pool_dir=abr_pools[1], settings=settings, log=lambda _: None)
    assert summary["optimizer_steps"] == 6
    policy, config = load_policy(tmp_path / "levers")
    assert config.levers["exit_layers"] == [1] and config.levers["exit_confidence"] == "softmax"
    assert set(policy.lever_modules.exit_heads) == {"1"} and set(policy.lever_modules.routers) == {"1"}

    # CQIL recovery: the trained policy's adapter folded into the backbone, a fresh adapter learns the group
    distilled = TrainSettings(**{**base, "channels": 16}, levers={"concurrent": [[0, 1]]}, distill=True)
    adapt(abr_pools[0], tmp_path / "cqil", backbone=str(tiny_backbone("llama")), val_pool_dir=abr_pools[1],
          settings=distilled, init_checkpoint=trained_checkpoint[0], log=lambda _: None)
    assert (tmp_path / "cqil" / BASE_ADAPTER_DIR / "adapter_model.safetensors").is_file()
    teacher, _ = load_policy(trained_checkpoint[0])
    student, student_config = load_policy(tmp_path / "cqil")
    assert student_config.base_adapter == BASE_ADAPTER_DIR and student_config.levers["concurrent"] == [[0, 1]]
    own = {k: v for k, v in teacher.policy_state_dict().items()}
    for key, value in student.policy_state_dict().items():  # encoders and head stayed frozen
        torch.testing.assert_close(value, own[key])
    decider = LlmDecider.from_checkpoint(tmp_path / "cqil", device="cpu")
    obs = dict(zip(abr_fields(), abr_rows(3, seed=1)[0]["obs"].tolist(), strict=True))
    assert 0 <= decider.decide(obs, 0.0) < 4


def test_two_hot_labels_teach_the_expected_p_prime_a_value_between_grid_steps(tmp_path, tiny_backbone):
    """A controller holding p' 40 % of a grid step above grid value 11 (0.059 between 0.046 and 0.086):
    learnt from its two-hot labels, the policy's expected p' is that p'; learnt from the nearest grid
    index, it is index 11's 0.046, a tenth of a decade lower."""
    from agents.protocol.control_points import AqmObservation
    from llm.features import p_prime_grid
    from llm.inference import load_decider
    from llm.pool import build_pool

    grid = p_prime_grid(17)
    step = np.log10(grid[12] / grid[11])
    between = float(grid[11] * 10 ** (0.4 * step))
    settings = TrainSettings(epochs=50, batch_size=8, lr=3e-3, warmup_fraction=0.1, window=4, stride=2, channels=16,
                             eval_every=1000, max_steps=60, val_fraction=0.0, lora=LoraSettings(rank=4, alpha=8))
    expected = {}
    for name, p_prime in {"continuous": between, "grid": float(grid[11])}.items():
        files = [write_decisions(tmp_path / f"{name}{i}.parquet", "aqm", aqm_fields(),
                                 [r | {"action": [p_prime]} for r in aqm_rows(24, seed=i)], acting="pi2")
                 for i in range(4)]
        pool = build_pool(files, tmp_path / f"pool-{name}", "aqm")
        assert (pool.episodes[0].soft is None) == (name == "grid")
        adapt(tmp_path / f"pool-{name}", tmp_path / name, backbone=str(tiny_backbone("llama")), settings=settings)
        decider = load_decider(tmp_path / name, device="cpu")
        obs = aqm_rows(1, seed=9)[0]["obs"]
        decider.decide(dict(zip(AqmObservation.field_names(), obs, strict=True)), 0.0)
        expected[name] = np.log10(decider.expected_p_prime())
    assert abs(expected["continuous"] - np.log10(between)) < 0.1 * step
    assert abs(expected["grid"] - np.log10(grid[11])) < 0.1 * step
