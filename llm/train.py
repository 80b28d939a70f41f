"""Adapting the LM into a policy: one readable offline-RL (decision transformer) training loop.

Hyper-parameters sit in :class:`TrainSettings` (NetLLM's values where they have one). The
loop: load the pool, split off validation episodes when no validation pool is given (the
statistics are then refit on the training episodes alone), build backbone + LoRA + policy,
then epochs of shuffled windows with gradient accumulation, evaluation every
``eval_every`` optimiser steps, the best checkpoint kept and early stopping on the
validation metric. A test set is never looked at here.

A checkpoint directory holds the PEFT adapter (``adapter_config.json``,
``adapter_model.safetensors``), ``policy.safetensors`` (encoders, embeddings, head) and
``policy_config.json``; :func:`load_policy` rebuilds the policy from that one path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from llm.backbone import default_backbone_dir, load_backbone, resolve_dtype, tiny_backbone_dir
from llm.lora import LoraSettings, apply_lora
from llm.policy import DEFAULT_CHANNELS, DEFAULT_WINDOW, DecisionTransformerPolicy, PolicyConfig, build_policy
from llm.pool import Episode, Pool, fit_statistics, load_pool

CONFIG_FILE = "policy_config.json"
WEIGHTS_FILE = "policy.safetensors"
#: Folder inside the checkpoint that holds a tiny backbone built for the run (``--backbone tiny``).
TINY_BACKBONE_DIR = "backbone"


@dataclass
class TrainSettings:
    """Training hyper-parameters (defaults: NetLLM's, except batch 8 x 4 instead of 1 x 32)."""

    epochs: int = 80
    batch_size: int = 8  # windows per micro-batch
    grad_accum: int = 4  # micro-batches per optimiser step
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 2000  # optimiser steps of linear warmup, then constant
    clip_grad: float = 0.25
    window: int = DEFAULT_WINDOW
    stride: int = 1  # a training window starts every `stride` steps of each episode
    channels: int = DEFAULT_CHANNELS
    max_timestep: int = 4095  # timestep embedding size - 1; later steps share the last row
    seed: int = 0
    eval_every: int = 200  # optimiser steps between validation passes
    eval_windows: int = 512  # at most this many validation windows per pass
    patience: int = 5  # validation passes without improvement before stopping
    select_on: str = "loss"  # 'loss' (lower is better) or 'accuracy' (higher is better)
    val_fraction: float = 0.1  # episodes held out when no validation pool is given
    max_steps: int | None = None  # stop after this many optimiser steps
    log_every: int = 20  # optimiser steps between progress lines
    device: str = "cpu"
    dtype: str = "float32"  # of the frozen LM; our modules and LoRA train in float32
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.select_on not in ("loss", "accuracy"):
            raise ValueError(f"select_on must be 'loss' or 'accuracy', got {self.select_on!r}")
        for name in ("epochs", "batch_size", "grad_accum", "window", "stride", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def resolve_backbone(backbone: str, checkpoint_dir: Path) -> Path:
    """Model directory named in a config: 'default', absolute, or relative to the checkpoint."""
    if backbone == "default":
        return default_backbone_dir()
    path = Path(backbone)
    return path if path.is_absolute() else checkpoint_dir / path


def save_checkpoint(policy: DecisionTransformerPolicy, config: PolicyConfig, out_dir: str | Path) -> Path:
    """Write adapter, our weights and the config; a checkpoint loads from this one directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(policy.backbone, PeftModel):
        raise TypeError("save_checkpoint needs the LoRA-wrapped (unmerged) backbone")
    policy.backbone.save_pretrained(out)
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.policy_state_dict().items()}, out / WEIGHTS_FILE)
    config.save(out / CONFIG_FILE)
    return out


def load_policy(
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    merge_lora: bool = False,
) -> tuple[DecisionTransformerPolicy, PolicyConfig]:
    """Rebuild a trained policy (eval mode) from a checkpoint directory.

    ``merge_lora`` folds the adapter into the LM weights (``merge_and_unload``): the same
    outputs up to rounding, without the adapter's extra matmuls at inference.
    """
    ckpt = Path(checkpoint_dir)
    if not (ckpt / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{ckpt} is not a policy checkpoint (no {CONFIG_FILE})")
    config = PolicyConfig.load(ckpt / CONFIG_FILE)
    torch_dtype = resolve_dtype(dtype)
    base = load_backbone(resolve_backbone(config.backbone, ckpt), dtype=torch_dtype, device=device)
    backbone = PeftModel.from_pretrained(base, ckpt, is_trainable=False)
    if merge_lora:
        backbone = backbone.merge_and_unload()
    policy = build_policy(config, backbone, dtype=torch_dtype)
    missing, unexpected = policy.load_state_dict(load_file(ckpt / WEIGHTS_FILE, device=str(device)), strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(f"{ckpt / WEIGHTS_FILE} does not fit the config: missing {missing}, unexpected {unexpected}")
    return policy.eval(), config


def _to_torch(flat: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in flat.items()}


def window_starts(data: dict[str, torch.Tensor], stride: int) -> torch.Tensor:
    """Indices where windows start: every ``stride`` steps of each episode, from its first step."""
    offset = torch.arange(len(data["actions"]), device=data["actions"].device) - data["episode_start"]
    return torch.nonzero(offset % stride == 0).squeeze(1)


def window_batch(data: dict[str, torch.Tensor], starts: torch.Tensor, window: int) -> dict[str, torch.Tensor]:
    """Windows of ``window`` steps from ``starts``, right-padded at the episode end (``mask`` False there)."""
    idx = starts[:, None] + torch.arange(window, device=starts.device)
    mask = idx < data["episode_end"][starts][:, None]
    idx = torch.where(mask, idx, starts[:, None])  # padding repeats a real step; the loss ignores it
    return {
        "returns": data["returns"][idx],
        "states": data["states"][idx],
        "actions": data["actions"][idx],
        "timesteps": data["timesteps"][idx],
        "mask": mask,
    }


def _split_episodes(pool: Pool, fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    if fraction <= 0 or len(pool.episodes) < 2:
        return pool.episodes, []
    order = np.random.default_rng(seed).permutation(len(pool.episodes))
    n_val = min(len(order) - 1, max(1, round(fraction * len(order))))
    held_out = set(order[:n_val].tolist())
    train = [e for i, e in enumerate(pool.episodes) if i not in held_out]
    return train, [e for i, e in enumerate(pool.episodes) if i in held_out]


@torch.no_grad()
def evaluate(
    policy: DecisionTransformerPolicy, data: dict[str, torch.Tensor], settings: TrainSettings
) -> tuple[float, float]:
    """Step-weighted validation loss and accuracy over non-overlapping windows (each step once)."""
    was_training = policy.training
    policy.eval()
    starts = window_starts(data, settings.window)
    if len(starts) > settings.eval_windows:  # evenly spaced subset: the same windows every pass
        starts = starts[torch.linspace(0, len(starts) - 1, settings.eval_windows, device=starts.device).long()]
    total_loss, total_correct, total_steps = 0.0, 0.0, 0
    for chunk in starts.split(settings.batch_size):
        batch = window_batch(data, chunk, settings.window)
        with _autocast(settings):
            loss, acc = policy.loss(**batch)
        n = int(batch["mask"].sum())
        total_loss += float(loss) * n
        total_correct += float(acc) * n
        total_steps += n
    policy.train(was_training)
    return total_loss / total_steps, total_correct / total_steps


def _autocast(settings: TrainSettings):
    """bf16/fp16 autocast when the frozen LM is held in reduced precision."""
    if settings.dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(settings.device).type, dtype=resolve_dtype(settings.dtype))


def _prepare_backbone(backbone: str, out_dir: Path, seed: int) -> tuple[Path, str]:
    """(model directory, how the config names it): 'default', 'tiny' (built into the checkpoint) or a path."""
    if backbone == "default":
        return default_backbone_dir(), "default"
    if backbone == "tiny":
        return tiny_backbone_dir(out_dir / TINY_BACKBONE_DIR, seed=seed), TINY_BACKBONE_DIR
    path = Path(backbone).resolve()
    return path, str(path)


def adapt(
    pool_dir: str | Path,
    out_dir: str | Path,
    backbone: str = "default",
    val_pool_dir: str | Path | None = None,
    settings: TrainSettings | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train a policy on a pool and write the best checkpoint (by validation) to ``out_dir``; returns a summary."""
    s = settings or TrainSettings()
    out = Path(out_dir)
    torch.manual_seed(s.seed)
    np.random.seed(s.seed)

    # Data: training episodes, validation episodes, statistics from the training episodes only.
    pool = load_pool(pool_dir)
    if val_pool_dir is not None:
        val_pool = load_pool(val_pool_dir)
        pool.check_compatible(val_pool)
        train_eps, val_eps = pool.episodes, val_pool.episodes
        features, rewards = pool.features, pool.rewards
    else:
        train_eps, val_eps = _split_episodes(pool, s.val_fraction, s.seed)
        features, rewards = fit_statistics(pool.features, train_eps)
    max_timestep = min(max(len(e) for e in train_eps) - 1, s.max_timestep)
    train = _to_torch(Pool(pool.manifest, train_eps).flat(features, rewards, max_timestep), s.device)
    val = _to_torch(Pool(pool.manifest, val_eps).flat(features, rewards, max_timestep), s.device) if val_eps else None
    starts = window_starts(train, s.stride)
    log(
        f"pool: {len(train_eps)} training episodes ({len(train['actions'])} steps, {len(starts)} windows), "
        f"{len(val_eps)} validation episodes" + ("" if val_eps else " (none: the last step's weights are kept)")
    )

    # Model: frozen LM + LoRA, our encoders/embeddings/head in float32.
    backbone_dir, backbone_name = _prepare_backbone(backbone, out, s.seed)
    lm = apply_lora(load_backbone(backbone_dir, dtype=s.dtype, device=s.device), s.lora)
    config = PolicyConfig(
        task=pool.task,
        backbone=backbone_name,
        n_actions=pool.n_actions,
        features=features,
        rewards=rewards,
        max_timestep=max_timestep,
        window=s.window,
        channels=s.channels,
        action_values=pool.manifest["action_values"],
        lora=s.lora.to_dict(),
    )
    policy = build_policy(config, lm).train()
    params = [p for p in policy.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    log(f"model: {backbone_dir} ({lm.base_model.model.config.model_type}), {n_trainable:,} trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min((step + 1) / s.warmup_steps, 1.0))

    selection = _Selection(s.select_on, s.patience, out)
    initial_loss, initial_acc = evaluate(policy, train, s)
    log(f"initial train loss {initial_loss:.4f} acc {initial_acc:.3f}")
    step, micro, stop = 0, 0, False
    run_loss, run_acc, run_count, t_log = 0.0, 0.0, 0, time.perf_counter()
    t_start = time.perf_counter()
    generator = torch.Generator().manual_seed(s.seed)
    for epoch in range(s.epochs):
        order = starts[torch.randperm(len(starts), generator=generator).to(starts.device)]
        for chunk in order.split(s.batch_size):
            with _autocast(s):
                loss, acc = policy.loss(**window_batch(train, chunk, s.window))
            (loss / s.grad_accum).backward()
            run_loss, run_acc, run_count = run_loss + loss.item(), run_acc + acc.item(), run_count + 1
            micro += 1
            if micro % s.grad_accum:
                continue
            torch.nn.utils.clip_grad_norm_(params, s.clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % s.log_every == 0:
                elapsed = time.perf_counter() - t_log
                log(
                    f"step {step} epoch {epoch} loss {run_loss / run_count:.4f} acc {run_acc / run_count:.3f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e} {run_count * s.batch_size / elapsed:.1f} windows/s"
                )
                run_loss, run_acc, run_count, t_log = 0.0, 0.0, 0, time.perf_counter()
            if val is not None and step % s.eval_every == 0:
                stop = selection.update(step, *evaluate(policy, val, s), policy, config, log)
            if stop or (s.max_steps is not None and step >= s.max_steps):
                stop = True
                break
        if stop:
            break

    if val is not None and (not selection.history or selection.history[-1]["step"] != step):
        selection.update(step, *evaluate(policy, val, s), policy, config, log)
    train_loss, train_acc = evaluate(policy, train, s)
    summary = {
        "optimizer_steps": step,
        "epochs_started": epoch + 1,
        "initial_train_loss": initial_loss,
        "initial_train_accuracy": initial_acc,
        "final_train_loss": train_loss,
        "final_train_accuracy": train_acc,
        "best_validation": selection.best,
        "validation_history": selection.history,
        "trainable_parameters": n_trainable,
        "wall_s": time.perf_counter() - t_start,
        "settings": {**asdict(s), "lora": s.lora.to_dict()},
    }
    if val is None:  # nothing to select on: keep the last weights
        config.training = summary
        save_checkpoint(policy, config, out)
    else:  # the saved checkpoint is the best one; record the run's summary in its config
        saved = PolicyConfig.load(out / CONFIG_FILE)
        saved.training = summary
        saved.save(out / CONFIG_FILE)
    log(
        f"done: {step} steps in {summary['wall_s']:.0f} s, train loss {initial_loss:.4f} -> {train_loss:.4f} "
        f"(acc {initial_acc:.3f} -> {train_acc:.3f}), best validation {selection.best}, checkpoint {out}"
    )
    return summary


@dataclass
class _Selection:
    """Keeps the best checkpoint by the validation metric and counts passes without improvement."""

    select_on: str
    patience: int
    out: Path
    best: dict | None = None
    misses: int = 0
    history: list[dict] = field(default_factory=list)

    def _better(self, metrics: dict) -> bool:
        if self.best is None:
            return True
        if self.select_on == "loss":
            return metrics["loss"] < self.best["loss"]
        return metrics["accuracy"] > self.best["accuracy"]

    def update(
        self,
        step: int,
        loss: float,
        accuracy: float,
        policy: DecisionTransformerPolicy,
        config: PolicyConfig,
        log: Callable[[str], None],
    ) -> bool:
        """Record one validation pass, saving the checkpoint if it is the best; True when patience ran out."""
        metrics = {"step": step, "loss": loss, "accuracy": accuracy}
        self.history.append(metrics)
        if self._better(metrics):
            self.best, self.misses = metrics, 0
            config.training = {"best_validation": metrics}
            save_checkpoint(policy, config, self.out)
            marker = " (best, saved)"
        else:
            self.misses += 1
            marker = f" (no gain {self.misses}/{self.patience})"
        log(f"validation step {step}: loss {loss:.4f} acc {accuracy:.3f}{marker}")
        return self.misses >= self.patience
