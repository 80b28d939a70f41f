"""Adapting the LM into a policy: one readable offline-RL (decision transformer) training loop.

Hyper-parameters sit in :class:`TrainSettings`. NetLLM's recipe (lr 1e-4 with a 2,000-step
warmup, chosen for a pretrained 7B model on a GPU) left a small policy unable to read its
state in a few hundred CPU steps, so the defaults here are scaled to what we train: lr 1e-3
for our encoders, embeddings and head, the adapters at ``lora_lr``, a warmup that is a
fraction of the run (never longer than it) followed by a cosine decay, and a run length
given in passes over the pool's windows.

The loop: load the pool, split off validation episodes when no validation pool is given
(statistics are then refit on the training episodes alone), build backbone + LoRA + policy,
then shuffled windows with gradient accumulation and a validation pass every ``eval_every``
optimiser steps. What is validated is chosen by ``select_on``: teacher-forced loss or
accuracy on the validation pool, or ``closed_loop``: a ``selector`` callback that runs the
policy in a simulator (the chunk-level ABR simulator on validation traces, say) and returns
a score, higher better. The best checkpoint is kept; patience stops a run that no longer
improves. A test set is never looked at here.

A checkpoint directory holds the PEFT adapter (``adapter_config.json``,
``adapter_model.safetensors``), ``policy.safetensors`` (encoders, embeddings, head) and
``policy_config.json``; :func:`load_policy` rebuilds the policy from that one path.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from llm.backbone import decoder_layers, default_backbone_dir, load_backbone, resolve_dtype, tiny_backbone_dir
from llm.lora import LoraSettings, apply_lora
from llm.policy import DEFAULT_CHANNELS, DEFAULT_WINDOW, DecisionTransformerPolicy, PolicyConfig, build_policy
from llm.pool import Episode, Pool, fit_statistics, load_pool

CONFIG_FILE = "policy_config.json"
WEIGHTS_FILE = "policy.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
#: Folder inside a distilled checkpoint holding the teacher's adapter, folded into the backbone at load.
BASE_ADAPTER_DIR = "base_adapter"
#: Folder inside the checkpoint that holds a tiny backbone built for the run (``--backbone tiny``).
TINY_BACKBONE_DIR = "backbone"
SELECT_ON = ("loss", "accuracy", "closed_loop")
OBJECTIVES = ("imitation", "action_values")

#: A closed-loop selector: runs the policy (eval mode) in a simulator, returns metrics with a "score" (higher better).
Selector = Callable[[torch.nn.Module, PolicyConfig], dict]


@dataclass
class TrainSettings:
    """Training hyper-parameters; the defaults suit a small or truncated backbone on a CPU."""

    epochs: float = 3.0  # passes over the training windows (sets the run length unless max_steps is given)
    max_steps: int | None = None  # optimiser steps; caps the run
    batch_size: int = 16  # windows per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-3  # our encoders, embeddings and head
    lora_lr: float | None = None  # the adapters (None: lr)
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05  # linear warmup over this share of the run, then cosine decay to 10 %
    clip_grad: float = 1.0
    window: int = DEFAULT_WINDOW
    stride: int = 1  # a training window starts every `stride` steps of each episode
    channels: int = DEFAULT_CHANNELS
    max_timestep: int = 4095  # timestep embedding size - 1; later steps share the last row
    backbone_layers: int | None = None  # keep the backbone's first k blocks (None: all)
    return_conditioning: bool = True  # False: the return token is always 0 (imitation)
    #: 'imitation' (cross-entropy to the logged actions) or 'action_values' (regress the teacher's
    #: advantage of every action, where the pool has them: see llm.policy.action_loss)
    objective: str = "imitation"
    #: latency levers (llm.engine.Levers fields: exit_layers, gates, concurrent, head_mlp, ...)
    levers: dict = field(default_factory=dict)
    #: recover from a lever with the init checkpoint as teacher (CQIL): its adapter is folded into the
    #: backbone, a fresh adapter trains, our encoders and head stay frozen, and the loss adds
    #: distill_weight * MSE to the outputs of the same model run plainly (adapter off, no lever)
    distill: bool = False
    distill_weight: float = 1.0
    seed: int = 0
    eval_every: int = 200  # optimiser steps between validation passes
    eval_windows: int = 512  # at most this many validation windows per teacher-forced pass
    patience: int = 5  # validation passes without improvement before stopping
    select_on: str = "loss"  # 'loss', 'accuracy' or 'closed_loop' (needs a selector)
    val_fraction: float = 0.1  # episodes held out when no validation pool is given
    log_every: int = 20  # optimiser steps between progress lines
    device: str = "cpu"
    dtype: str = "float32"  # of the frozen LM; our modules and LoRA train in float32
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        for name in ("batch_size", "grad_accum", "window", "stride", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def total_steps(self, n_windows: int) -> int:
        """Optimiser steps of the run: ``epochs`` passes over ``n_windows``, capped by ``max_steps``."""
        per_epoch = math.ceil(n_windows / self.batch_size / self.grad_accum)
        steps = max(1, math.ceil(self.epochs * per_epoch))
        return min(steps, self.max_steps) if self.max_steps is not None else steps

    def warmup_steps(self, total_steps: int) -> int:
        """Warmup length: a fraction of the run, never longer than it."""
        return min(total_steps, max(1, round(self.warmup_fraction * total_steps)))

    def to_dict(self) -> dict:
        return {**asdict(self), "lora": self.lora.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        data = dict(data)
        lora = LoraSettings(**data.pop("lora", {}))
        return cls(**data, lora=lora)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based): linear warmup, cosine to 0.1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


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
    card = out / "README.md"
    kept = card.read_text() if card.is_file() else None
    policy.backbone.save_pretrained(out)
    # PEFT records where the base model was loaded from (a training run's scratch directory); record the
    # backbone the checkpoint really loads (its own copy, relative, or a model directory)
    adapter_config = out / "adapter_config.json"
    adapter = json.loads(adapter_config.read_text())
    adapter["base_model_name_or_path"] = str(config.backbone)
    adapter_config.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")
    # PEFT writes a blank Hugging Face model card: a checkpoint's card is ours (testbed learn writes it) or none
    if kept is None:
        card.unlink(missing_ok=True)
    else:
        card.write_text(kept)
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
    base = load_backbone(
        resolve_backbone(config.backbone, ckpt), dtype=torch_dtype, device=device, layers=config.backbone_layers
    )
    if config.base_adapter:  # an earlier adapter folded into the backbone (a distilled lever's teacher)
        base = PeftModel.from_pretrained(base, ckpt / config.base_adapter, is_trainable=False).merge_and_unload()
    backbone = PeftModel.from_pretrained(base, ckpt, is_trainable=False)
    if merge_lora:
        backbone = backbone.merge_and_unload()
    policy = build_policy(config, backbone, dtype=torch_dtype)
    _load_own_weights(policy, ckpt, device)
    return policy.eval(), config


def _load_own_weights(policy: DecisionTransformerPolicy, ckpt: Path, device: str | torch.device,
                      new_levers: bool = False) -> None:
    """Our weights from ``ckpt``; ``new_levers``: lever modules the checkpoint lacks start fresh (warm start)."""
    missing, unexpected = policy.load_state_dict(load_file(ckpt / WEIGHTS_FILE, device=str(device)), strict=False)
    missing = [k for k in missing if not k.startswith("backbone.") and not (new_levers and k.startswith("lever_"))]
    if missing or unexpected:
        raise ValueError(f"{ckpt / WEIGHTS_FILE} does not fit the config: missing {missing}, unexpected {unexpected}")


def _to_torch(flat: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in flat.items()}


def window_starts(data: dict[str, torch.Tensor], stride: int) -> torch.Tensor:
    """Indices where windows start: every ``stride`` steps of each episode, from its first step."""
    offset = torch.arange(len(data["actions"]), device=data["actions"].device) - data["episode_start"]
    return torch.nonzero(offset % stride == 0).squeeze(1)


def window_batch(
    data: dict[str, torch.Tensor], starts: torch.Tensor, window: int, objective: str = "imitation"
) -> dict[str, torch.Tensor]:
    """Windows of ``window`` steps from ``starts``, right-padded at the episode end (``mask`` False there)."""
    idx = starts[:, None] + torch.arange(window, device=starts.device)
    mask = idx < data["episode_end"][starts][:, None]
    idx = torch.where(mask, idx, starts[:, None])  # padding repeats a real step; the loss ignores it
    batch = {
        "returns": data["returns"][idx],
        "states": data["states"][idx],
        "actions": data["actions"][idx],
        "history_actions": data["history_actions"][idx],
        "timesteps": data["timesteps"][idx],
        "mask": mask,
    }
    if objective == "action_values":
        batch["advantages"] = data["advantages"][idx]
    elif "soft" in data:  # imitation of two-hot labels (continuous p' between grid values)
        batch["soft"] = data["soft"][idx]
    return batch


def split_episodes(pool: Pool, fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """(training, validation) episodes: a seeded random ``fraction`` held out (none below two episodes)."""
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
    """Step-weighted teacher-forced loss and accuracy over non-overlapping windows (each step once)."""
    was_training = policy.training
    policy.eval()
    starts = window_starts(data, settings.window)
    if len(starts) > settings.eval_windows:  # evenly spaced subset: the same windows every pass
        starts = starts[torch.linspace(0, len(starts) - 1, settings.eval_windows, device=starts.device).long()]
    total_loss, total_correct, total_steps = 0.0, 0.0, 0
    for chunk in starts.split(settings.batch_size):
        batch = window_batch(data, chunk, settings.window, settings.objective)
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
        return tiny_backbone_dir(out_dir / TINY_BACKBONE_DIR, hidden=128, layers=2, heads=4, seed=seed), TINY_BACKBONE_DIR
    path = Path(backbone).resolve()
    return path, str(path)


def _warm_start(policy: DecisionTransformerPolicy, ckpt: Path, device: str, adapter: bool = True) -> None:
    """Continue from a checkpoint's own weights and (unless it was folded into the backbone) its adapter."""
    _load_own_weights(policy, ckpt, device, new_levers=True)
    if adapter:
        set_peft_model_state_dict(policy.backbone, load_file(ckpt / ADAPTER_FILE, device=device))


def _distill_loss(policy: DecisionTransformerPolicy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE between the policy's outputs and the same model's run plainly (no adapter, no lever): CQIL's
    distillation, one forward with the change and one without, on the same weights (no teacher copy)."""
    inputs = {k: batch[k] for k in ("returns", "states", "timesteps")} | {"actions": batch["history_actions"]}
    with torch.no_grad(), policy.backbone.disable_adapter(), policy.plain():
        target = policy(**inputs).float()
    valid = batch["mask"].bool()
    return torch.nn.functional.mse_loss(policy(**inputs).float()[valid], target[valid])


def _levers_for(s: TrainSettings) -> dict:
    """The run's levers; exit confidence read the way the heads are trained unless given."""
    levers = dict(s.levers)
    if levers.get("exit_layers") and "exit_confidence" not in levers:
        levers["exit_confidence"] = "margin" if s.objective == "action_values" else "softmax"
    return levers


def _copy_adapter(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", ADAPTER_FILE):
        shutil.copyfile(src / name, dst / name)


def adapt(
    pool_dir: str | Path,
    out_dir: str | Path,
    backbone: str = "default",
    val_pool_dir: str | Path | None = None,
    settings: TrainSettings | None = None,
    log: Callable[[str], None] = print,
    selector: Selector | None = None,
    init_checkpoint: str | Path | None = None,
) -> dict:
    """Train a policy on a pool and write the best checkpoint (by ``select_on``) to ``out_dir``; returns a summary.

    ``init_checkpoint`` continues from an earlier checkpoint of the same backbone, keeping its
    feature statistics (a DAgger round on a grown pool).
    """
    s = settings or TrainSettings()
    if s.select_on == "closed_loop" and selector is None:
        raise ValueError("select_on='closed_loop' needs a selector (a simulator to run the policy in)")
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
    elif s.select_on == "closed_loop":
        train_eps, val_eps = pool.episodes, []
        features, rewards = pool.features, pool.rewards
    else:
        train_eps, val_eps = split_episodes(pool, s.val_fraction, s.seed)
        features, rewards = fit_statistics(pool.features, train_eps)
    init = Path(init_checkpoint) if init_checkpoint is not None else None
    if init is not None:
        init_config = PolicyConfig.load(init / CONFIG_FILE)
        features, rewards = init_config.features, init_config.rewards
    max_timestep = min(max(len(e) for e in train_eps) - 1, s.max_timestep)
    if init is not None:
        max_timestep = init_config.max_timestep
    if s.objective == "action_values":
        pool.check_has_values()
    train = _to_torch(Pool(pool.manifest, train_eps).flat(features, rewards, max_timestep), s.device)
    val = _to_torch(Pool(pool.manifest, val_eps).flat(features, rewards, max_timestep), s.device) if val_eps else None
    if not s.return_conditioning:
        for data in (train, val):
            if data is not None:
                data["returns"].zero_()
    starts = window_starts(train, s.stride)
    total_steps = s.total_steps(len(starts))
    warmup_steps = s.warmup_steps(total_steps)
    log(
        f"pool: {len(train_eps)} training episodes ({len(train['actions'])} steps, {len(starts)} windows), "
        f"{len(val_eps)} validation episodes; {total_steps} optimiser steps, warmup {warmup_steps}"
    )

    # Model: frozen LM + LoRA, our encoders/embeddings/head in float32.
    backbone_dir, backbone_name = _prepare_backbone(backbone, out, s.seed)
    lm = load_backbone(backbone_dir, dtype=s.dtype, device=s.device, layers=s.backbone_layers)
    base_adapter = None
    if s.distill:  # CQIL: the teacher's adapter goes into the backbone, a fresh one recovers the lever
        if init is None:
            raise ValueError("distill needs init_checkpoint: the trained policy the lever must stay close to")
        lm = PeftModel.from_pretrained(lm, init, is_trainable=False).merge_and_unload()
        base_adapter = BASE_ADAPTER_DIR
    lm = apply_lora(lm, s.lora)
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
        backbone_layers=s.backbone_layers,
        return_conditioning=s.return_conditioning,
        levers=_levers_for(s),
        base_adapter=base_adapter,
        lora=s.lora.to_dict(),
    )
    policy = build_policy(config, lm).train()
    if init is not None:
        _warm_start(policy, init, s.device, adapter=not s.distill)
    if s.distill:
        _copy_adapter(init, out / BASE_ADAPTER_DIR)
        for name, param in policy.named_parameters():  # the lever recovers in the adapter (and its own modules)
            if not name.startswith(("backbone.", "lever_modules.")):
                param.requires_grad_(False)
    adapters = [p for n, p in policy.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    own = [p for n, p in policy.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    params = own + adapters
    n_trainable = sum(p.numel() for p in params)
    log(f"model: {backbone_dir} ({lm.base_model.model.config.model_type}, {len(_blocks(lm))} blocks), "
        f"{n_trainable:,} trainable parameters")
    optimizer = torch.optim.AdamW(
        [{"params": own, "lr": s.lr}, {"params": adapters, "lr": s.lora_lr or s.lr}], weight_decay=s.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup_steps))

    selection = _Selection(s.select_on, s.patience, out)

    def validate(step: int) -> bool:
        if s.select_on == "closed_loop":
            policy.eval()
            metrics = dict(selector(policy, config))
            policy.train()
        else:
            loss, accuracy = evaluate(policy, val, s)
            metrics = {"loss": loss, "accuracy": accuracy}
        return selection.update(step, metrics, policy, config, log)

    can_validate = val is not None or s.select_on == "closed_loop"
    initial_loss, initial_acc = evaluate(policy, train, s)
    log(f"initial train loss {initial_loss:.4f} acc {initial_acc:.3f}")
    step, micro, epoch, stop = 0, 0, 0, False
    run_loss, run_acc, run_count, t_log = 0.0, 0.0, 0, time.perf_counter()
    t_start = time.perf_counter()
    generator = torch.Generator().manual_seed(s.seed)
    while not stop:
        order = starts[torch.randperm(len(starts), generator=generator).to(starts.device)]
        for chunk in order.split(s.batch_size):
            batch = window_batch(train, chunk, s.window, s.objective)
            with _autocast(s):
                loss, acc = policy.loss(**batch)
                if s.distill:
                    loss = loss + s.distill_weight * _distill_loss(policy, batch)
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
                    f"step {step}/{total_steps} epoch {epoch} loss {run_loss / run_count:.4f} "
                    f"acc {run_acc / run_count:.3f} lr {scheduler.get_last_lr()[0]:.2e} "
                    f"{run_count * s.batch_size / elapsed:.1f} windows/s"
                )
                run_loss, run_acc, run_count, t_log = 0.0, 0.0, 0, time.perf_counter()
            if can_validate and step % s.eval_every == 0:
                stop = validate(step)
            if stop or step >= total_steps:
                stop = True
                break
        epoch += 1

    if can_validate and (not selection.history or selection.history[-1]["step"] != step):
        validate(step)
    train_loss, train_acc = evaluate(policy, train, s)
    summary = {
        "optimizer_steps": step,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "epochs_started": epoch,
        "initial_train_loss": initial_loss,
        "initial_train_accuracy": initial_acc,
        "final_train_loss": train_loss,
        "final_train_accuracy": train_acc,
        "best_validation": selection.best,
        "validation_history": selection.history,
        "trainable_parameters": n_trainable,
        "wall_s": time.perf_counter() - t_start,
        "settings": s.to_dict(),
    }
    if not can_validate:  # nothing to select on: keep the last weights
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


def _blocks(lm: PeftModel) -> torch.nn.ModuleList:
    return decoder_layers(lm.get_base_model())


@dataclass
class _Selection:
    """Keeps the best checkpoint by the validation metric and counts passes without improvement."""

    select_on: str
    patience: int
    out: Path
    best: dict | None = None
    misses: int = 0
    history: list[dict] = field(default_factory=list)

    def _value(self, metrics: dict) -> float:
        """The metric as 'higher is better'."""
        if self.select_on == "loss":
            return -metrics["loss"]
        if self.select_on == "accuracy":
            return metrics["accuracy"]
        return metrics["score"]

    def update(
        self, step: int, metrics: dict, policy: DecisionTransformerPolicy, config: PolicyConfig,
        log: Callable[[str], None],
    ) -> bool:
        """Record one validation pass, saving the checkpoint if it is the best; True when patience ran out."""
        metrics = {"step": step, **metrics}
        self.history.append(metrics)
        if self.best is None or self._value(metrics) > self._value(self.best):
            self.best, self.misses = metrics, 0
            saved = replace(config, training={"best_validation": metrics})
            save_checkpoint(policy, saved, self.out)
            marker = " (best, saved)"
        else:
            self.misses += 1
            marker = f" (no gain {self.misses}/{self.patience})"
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step" and isinstance(v, float))
        log(f"validation step {step}: {shown}{marker}")
        return self.misses >= self.patience
