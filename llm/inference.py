"""The LLM policy as the agent process uses it: one decision per observation, KV cache kept across steps.

Public API (small and stable)::

    decider = LlmDecider.from_checkpoint(path, device="auto", dtype="auto")
    decider.reset()                        # before each episode
    index = decider.decide(obs, reward)    # -> int action index
    decider.latency_ms                     # list[float]: wall time of each decide() call, in ms
    decider.action_values                  # AQM: np.ndarray, the p' of each index; ABR: None

* ``obs`` maps observation field names (those in the checkpoint's ``obs_fields``, as the
  simulator's layouts name them) to values; extra keys are ignored.
* ``reward`` is the reward that arrived with this observation, i.e. for the previous action;
  it is ignored on the first call after :meth:`LlmDecider.reset`.
* ABR: the index is the quality level. AQM: apply ``action_values[index]`` as p'.
* ``device="auto"``: CUDA in bfloat16 when available, else CPU in float32.

``LlmDecider.untrained(task, backbone_dir, n_actions, obs_fields=...)`` builds the same
pipeline with random encoders and identity feature statistics, for runs without a
checkpoint (latency measurements, plumbing tests): its actions mean nothing.

Decisions are greedy by default. The target return starts at the pool's maximum scaled
return and the scaled reward achieved is subtracted after each step (decision-transformer
conditioning). See :mod:`llm.policy` for the KV cache and the cost of sliding the window.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from llm.backbone import load_backbone, resolve_dtype
from llm.features import RewardScale, feature_spec, p_prime_grid
from llm.policy import (
    DEFAULT_WINDOW,
    DecisionSession,
    DecisionTransformerPolicy,
    PendingStep,
    PolicyConfig,
    build_policy,
    step_sessions,
)
from llm.train import load_policy


def load_decider(path: str | Path, device: str = "auto", dtype: str | torch.dtype = "auto", **kwargs):
    """The decider of any learned checkpoint: a decision transformer (:class:`LlmDecider`) or the MLP baseline."""
    config_file = Path(path) / "policy_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a policy checkpoint (no policy_config.json)")
    if json.loads(config_file.read_text()).get("kind") == "mlp":
        from llm.mlp import MlpDecider

        return MlpDecider.from_checkpoint(path, device=device)
    return LlmDecider.from_checkpoint(path, device=device, dtype=dtype, **kwargs)


def resolve_device(device: str, dtype: str | torch.dtype) -> tuple[torch.device, torch.dtype]:
    """'auto' picks CUDA (bfloat16) when available, else CPU (float32); an explicit choice is kept."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    if dtype == "auto":
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    return torch_device, resolve_dtype(dtype)


class LlmDecider:
    """One environment's decision loop around a :class:`DecisionTransformerPolicy` (see module docstring)."""

    def __init__(
        self,
        policy: DecisionTransformerPolicy,
        config: PolicyConfig,
        keep_steps: int | None = None,
        greedy: bool = True,
        seed: int = 0,
    ) -> None:
        self.policy = policy.eval()
        self.config = config
        self.greedy = greedy
        self.latency_ms: list[float] = []
        self.action_values = None if config.action_values is None else np.asarray(config.action_values)
        self._spec = config.features
        self._session = DecisionSession(policy, batch_size=1, keep_steps=keep_steps)
        self._device = policy.head.weight.device
        self._generator = torch.Generator(device=self._device).manual_seed(seed)
        self.reset()

    def fork(self) -> LlmDecider:
        """A decider for another stream: the same model (no copy of its weights), a context of its own."""
        return LlmDecider(self.policy, self.config, keep_steps=self._session.keep_steps, greedy=self.greedy)

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def n_actions(self) -> int:
        return self.config.n_actions

    @property
    def obs_fields(self) -> list[str]:
        return list(self._spec.obs_fields)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        keep_steps: int | None = None,
        merge_lora: bool = True,
        greedy: bool | None = None,
        seed: int = 0,
    ) -> LlmDecider:
        """Load a trained policy; LoRA is merged into the LM by default (same outputs, fewer matmuls).
        ``greedy`` None samples only if the checkpoint's config says so (``decode: sample``)."""
        torch_device, torch_dtype = resolve_device(device, dtype)
        policy, config = load_policy(path, device=torch_device, dtype=torch_dtype, merge_lora=merge_lora)
        if merge_lora and policy.decoder is not None:
            policy.decoder.fuse()  # the adapter is in the weights now: fuse them for inference
            policy.release_for_inference()
        return cls(policy, config, keep_steps=keep_steps, greedy=config.decode != "sample" if greedy is None else greedy,
                   seed=seed)

    @classmethod
    def untrained(
        cls,
        task: str,
        backbone_dir: str | Path,
        n_actions: int,
        *,
        obs_fields: Sequence[str],
        window: int = DEFAULT_WINDOW,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        keep_steps: int | None = None,
        max_timestep: int = 1023,
        seed: int = 0,
    ) -> LlmDecider:
        """Random encoders on a pretrained LM, features standardised with mean 0 / std 1: for latency, not decisions."""
        torch_device, torch_dtype = resolve_device(device, dtype)
        spec = feature_spec(task, list(obs_fields))
        spec = replace(spec, mean=[0.0] * spec.n_values, std=[1.0] * spec.n_values)
        config = PolicyConfig(
            task=task,
            backbone=str(Path(backbone_dir).resolve()),
            n_actions=n_actions,
            features=spec,
            rewards=RewardScale.for_task(task),
            max_timestep=max_timestep,
            window=window,
            action_values=p_prime_grid(n_actions).tolist() if task == "aqm" else None,
        )
        torch.manual_seed(seed)
        lm = load_backbone(backbone_dir, dtype=torch_dtype, device=torch_device)
        policy = build_policy(config, lm, dtype=torch_dtype)
        if policy.decoder is not None:
            policy.decoder.fuse()
            policy.release_for_inference()
        return cls(policy, config, keep_steps=keep_steps, seed=seed)

    def reset(self) -> None:
        """Start a new episode: empty context, target return back at the pool's maximum."""
        self._session.reset()
        self._rows: deque[np.ndarray] = deque(maxlen=self._spec.history_ticks)
        self._target = self.config.rewards.start_return
        self._step = 0
        self._prev_action: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    def _vector(self, obs: Mapping[str, float]) -> np.ndarray:
        try:
            return np.array([obs[name] for name in self._spec.obs_fields], dtype=np.float64)
        except KeyError as missing:
            raise KeyError(f"observation lacks field {missing.args[0]!r} that this policy reads") from None

    def _begin(self, obs: Mapping[str, float], reward: float) -> PendingStep:
        self._rows.append(self._vector(obs))
        state = self._spec.normalise(self._spec.raw_features(np.stack(self._rows))[-1:])
        if self._step > 0:
            self._target -= float(self.config.rewards.scale_rewards(reward))
        rtg = self._target / self.config.rewards.return_divisor if self.config.return_conditioning else 0.0
        timestep = min(self._step, self.config.max_timestep)
        return self._session.begin(
            torch.tensor([rtg], dtype=torch.float32), torch.from_numpy(state), torch.tensor([timestep]),
            self._prev_action,
        )

    def _choose(self, logits: torch.Tensor) -> int:
        self._logits = logits
        if self.greedy:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(logits.softmax(-1), 1, generator=self._generator).squeeze(-1)
        self._prev_action = action
        self._step += 1
        return int(action.item())  # .item() waits for the device, so a caller's wall time is complete

    @torch.no_grad()
    def decide(self, obs: Mapping[str, float], reward: float) -> int:
        """The action index for ``obs``; ``reward`` is the one for the previous action."""
        t0 = time.perf_counter()
        index = self._choose(step_sessions([self._begin(obs, reward)])[0])
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        return index

    def expected_p_prime(self) -> float:
        """AQM: the p' at the expected log p' of the last decision's distribution over the grid.

        A teacher whose integrator crosses a grid step every few ticks looks, from the states the
        model sees, like one that steps with some probability each tick; the argmax of that
        distribution never steps (a standing queue is met with the p' in force, forever), while its
        expectation moves by that probability's share of a step each tick, as the integrator does.
        p' = 0 counts as one grid step below the smallest non-zero value; an expectation below half
        a step under it is 0.
        """
        if self.action_values is None or self._logits is None:
            raise RuntimeError("expected_p_prime needs an AQM decision first")
        log_grid = np.log10(self.action_values[1:])
        step = float(log_grid[1] - log_grid[0])
        anchors = np.concatenate([[log_grid[0] - step], log_grid])
        probs = self._logits.float().softmax(-1).reshape(-1).cpu().numpy()
        expected = float(probs @ anchors)
        return 0.0 if expected < log_grid[0] - step / 2 else min(10.0**expected, 1.0)

    def played(self, index: int) -> None:
        """Record the action really taken when it differs from the one decided (a stall guard lowered it):
        the next step's action token is then what was played, as in every training episode."""
        if self._prev_action is not None:
            self._prev_action = torch.full_like(self._prev_action, int(index))

    @property
    def previous_action(self) -> int | None:
        """The action token the next step will carry (None at an episode's start)."""
        return None if self._prev_action is None else int(self._prev_action.item())

    def prepare(self) -> bool:
        """Work for the next decision that needs no state yet (the window's slide, see
        :meth:`llm.policy.DecisionSession.prepare`); call it once the answer is out. Returns whether it slid."""
        return self._prev_action is not None and self._session.prepare(self._prev_action)

    @property
    def blocks_run(self) -> int:
        """Blocks the last decision ran (fewer than all after an early exit)."""
        return self._session.blocks_run


@torch.no_grad()
def decide_batch(deciders: Sequence[LlmDecider], observations: Sequence[Mapping[str, float]],
                 rewards: Sequence[float]) -> list[int]:
    """One decision for each of many streams of one policy, in as few forward passes as their contexts allow.

    Each decider keeps its own context, KV cache and positions; the result equals calling
    ``decide`` on each in turn up to float rounding. Every decider's ``latency_ms`` gets the
    batch's wall time (what each stream waited).
    """
    t0 = time.perf_counter()
    pendings = [d._begin(o, r) for d, o, r in zip(deciders, observations, rewards, strict=True)]
    indices = [d._choose(logits) for d, logits in zip(deciders, step_sessions(pendings), strict=True)]
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    for d in deciders:
        d.latency_ms.append(elapsed_ms)
    return indices
