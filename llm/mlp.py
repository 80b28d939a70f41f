"""The behaviour-cloning baseline the LLM must be measured against: an MLP on the same features and data.

If a pretrained language model adds anything to these policies, it has to show against a
plain network that sees exactly what the decision transformer's state tokens see (one
step's normalised features, histories included) and learns from the same pools with the
same closed-loop selection. This module is that network, its training loop and its
checkpoint (``policy_config.json`` with ``"kind": "mlp"`` + ``policy.safetensors``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llm.features import FeatureSpec
from llm.policy import action_loss
from llm.pool import Pool, load_pool

CONFIG_FILE = "policy_config.json"
WEIGHTS_FILE = "policy.safetensors"
KIND = "mlp"


@dataclass
class MlpConfig:
    """What rebuilds an MLP policy and feeds it; stored as policy_config.json."""

    task: str
    n_actions: int
    features: FeatureSpec
    hidden: int = 256
    layers: int = 2
    action_values: list[float] | None = None
    training: dict = field(default_factory=dict)
    kind: str = KIND
    #: ABR: the margin (s) of agents.abr.guard.StallGuard the agent acts with; None: unguarded
    stall_guard_s: float | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "features": self.features.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> MlpConfig:
        data = dict(data)
        if data.get("kind") != KIND:
            raise ValueError(f"not an MLP policy config (kind {data.get('kind')!r})")
        data["features"] = FeatureSpec.from_dict(data["features"])
        return cls(**data)


class MlpPolicy(nn.Module):
    """Normalised features of one step -> action logits."""

    def __init__(self, n_values: int, n_actions: int, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        if layers < 1 or hidden < 1:
            raise ValueError(f"need layers >= 1 and hidden >= 1, got {layers}, {hidden}")
        blocks: list[nn.Module] = []
        width = n_values
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU()]
            width = hidden
        blocks.append(nn.Linear(width, n_actions))
        self.net = nn.Sequential(*blocks)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net(states)


@dataclass
class MlpSettings:
    """Training hyper-parameters of the baseline."""

    epochs: float = 30.0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    layers: int = 2
    eval_every: int = 200
    patience: int = 5
    seed: int = 0
    log_every: int = 100
    objective: str = "imitation"  # or 'action_values' (see llm.policy.action_loss)


def save_mlp(model: MlpPolicy, config: MlpConfig, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    return out


def load_mlp(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MlpPolicy, MlpConfig]:
    ckpt = Path(checkpoint_dir)
    config = MlpConfig.from_dict(json.loads((ckpt / CONFIG_FILE).read_text()))
    model = MlpPolicy(config.features.n_values, config.n_actions, config.hidden, config.layers)
    model.load_state_dict(load_file(ckpt / WEIGHTS_FILE, device=str(device)))
    return model.to(device).eval(), config


def train_mlp(
    pool_dir: str | Path,
    out_dir: str | Path,
    settings: MlpSettings | None = None,
    selector: Callable[[MlpPolicy, MlpConfig], dict] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Behaviour cloning on a pool; the best checkpoint by ``selector`` (closed loop, higher score better) is kept.

    Without a selector the last weights are kept.
    """
    s = settings or MlpSettings()
    torch.manual_seed(s.seed)
    pool: Pool = load_pool(pool_dir)
    if s.objective == "action_values":
        pool.check_has_values()
    flat = pool.flat(pool.features, pool.rewards, max_timestep=0)
    states = torch.from_numpy(flat["states"])
    actions = torch.from_numpy(flat["actions"])
    advantages = torch.from_numpy(flat["advantages"]) if s.objective == "action_values" else None
    soft = torch.from_numpy(flat["soft"]) if "soft" in flat and advantages is None else None
    config = MlpConfig(pool.task, pool.n_actions, pool.features, s.hidden, s.layers, pool.manifest["action_values"])
    model = MlpPolicy(states.shape[1], pool.n_actions, s.hidden, s.layers).train()
    total_steps = max(1, math.ceil(s.epochs * len(states) / s.batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps, eta_min=s.lr * 0.1)
    generator = torch.Generator().manual_seed(s.seed)
    best: dict | None = None
    history: list[dict] = []
    misses, step, t0 = 0, 0, time.perf_counter()
    log(f"mlp: {len(states)} steps of {pool.task} experience, {states.shape[1]} features, {total_steps} optimiser steps")
    while step < total_steps and misses < s.patience:
        for idx in torch.randperm(len(states), generator=generator).split(s.batch_size):
            valid = torch.ones(len(idx), dtype=torch.bool)
            loss, _ = action_loss(model(states[idx]), actions[idx], valid, None if advantages is None else advantages[idx],
                                  None if soft is None else soft[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % s.log_every == 0:
                log(f"step {step}/{total_steps} loss {loss.item():.4f}")
            if selector is not None and (step % s.eval_every == 0 or step == total_steps):
                model.eval()
                metrics = {"step": step, **selector(model, config)}
                model.train()
                history.append(metrics)
                if best is None or metrics["score"] > best["score"]:
                    best, misses = metrics, 0
                    config.training = {"best_validation": best}
                    save_mlp(model, config, out_dir)
                else:
                    misses += 1
                log(f"validation step {step}: score {metrics['score']:.4f}{' (best, saved)' if best is metrics else ''}")
                if misses >= s.patience:
                    break
            if step >= total_steps:
                break
    with torch.no_grad():
        model.eval()
        accuracy = float((model(states).argmax(-1) == actions).float().mean())
    summary = {"optimizer_steps": step, "train_accuracy": accuracy, "best_validation": best,
               "validation_history": history, "wall_s": time.perf_counter() - t0, "settings": asdict(s)}
    if selector is None:
        config.training = summary
        save_mlp(model, config, out_dir)
    else:
        saved = json.loads((Path(out_dir) / CONFIG_FILE).read_text())
        saved["training"] = summary
        (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(saved, indent=2))
    log(f"mlp done: {step} steps in {summary['wall_s']:.0f} s, train accuracy {accuracy:.3f}, best {best}")
    return summary


class MlpDecider:
    """The baseline in the agent's decision API (``decide(obs, reward) -> index``), like :class:`LlmDecider`."""

    def __init__(self, model: MlpPolicy, config: MlpConfig) -> None:
        self.model = model.eval()
        self.config = config
        self.latency_ms: list[float] = []
        self.action_values = None if config.action_values is None else np.asarray(config.action_values)
        self._rows: list[np.ndarray] = []

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **_: object) -> MlpDecider:
        return cls(*load_mlp(path, "cpu" if device == "auto" else device))

    def fork(self) -> MlpDecider:
        """A decider for another stream, sharing the model."""
        return MlpDecider(self.model, self.config)

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def n_actions(self) -> int:
        return self.config.n_actions

    @property
    def obs_fields(self) -> list[str]:
        return list(self.config.features.obs_fields)

    def reset(self) -> None:
        self._rows = []

    @torch.no_grad()
    def decide(self, obs: dict[str, float], reward: float) -> int:
        t0 = time.perf_counter()
        spec = self.config.features
        self._rows.append(np.array([obs[n] for n in spec.obs_fields], dtype=np.float64))
        self._rows = self._rows[-spec.history_ticks:]
        state = spec.normalise(spec.raw_features(np.stack(self._rows))[-1:])
        index = int(self.model(torch.from_numpy(state)).argmax(-1).item())
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        return index
