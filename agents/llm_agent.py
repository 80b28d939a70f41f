"""The LLM policy as an agent: replaces or shadows a classic controller.

Replace mode is ``python -m agents serve --policy llm``; shadow mode is
``--policy pi2 --shadow llm`` (the classic one acts, the LLM's would-be action
and its latency are logged beside it in decisions.parquet).

A decision deadline keeps the loop live: inference runs on a worker thread
and, if it has not answered within ``deadline_ms``, the fallback policy's
action is used and counted (``last_fallback``). The late inference still
completes before the next decision, so the KV cache stays consistent. The
fallback policy sees every observation, so its own state (PI2's previous
delay, MPC's error history) is current whenever it has to act.

Which model decides, in order: ``checkpoint=DIR`` (``--policy-arg``);
``TESTBED_LLM_CHECKPOINT`` when it holds a policy for this control kind;
``TESTBED_LLM_BACKBONE`` (a local model directory, ``default`` for SmolLM2-135M,
``tiny`` for a small random Llama) with untrained encoders — for latency and
plumbing, not decisions; else the policy shipped in the package for the task
(:mod:`llm.shipped`).

An ABR checkpoint may name a stall guard (``stall_guard_s`` in its config,
:mod:`agents.abr.guard`): the agent then lowers a choice whose chunk would not
arrive before the buffer runs dry. ``stall_guard_s=none`` (or a margin in
seconds) overrides the checkpoint's setting. An AQM checkpoint may name an idle
guard (``idle_guard_utilisation``, :mod:`agents.aqm.guard`): p' then falls a grid
step per tick while the queue is empty and the link under-used;
``idle_guard=none`` (or a utilisation) overrides it.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from agents.policy import Policy, observe_reward
from agents.protocol.control_points import AbrObservation, AqmObservation, aqm_action_grid

DEFAULT_FALLBACK = {"aqm": "pi2", "abr": "mpc"}
#: ABR observations carry this many quality levels (video1's ladder) when no checkpoint says otherwise.
DEFAULT_ABR_LEVELS = 6


def _checkpoint_from_env(control: str) -> str | None:
    """``TESTBED_LLM_CHECKPOINT`` if it holds a policy for ``control`` (one run may serve both tasks)."""
    path = os.environ.get("TESTBED_LLM_CHECKPOINT")
    if not path:
        return None
    config = Path(path) / "policy_config.json"
    if config.is_file() and json.loads(config.read_text()).get("task") not in (None, control):
        return None
    return path


def _backbone_dir(spec: str) -> Path:
    from llm.backbone import default_backbone_dir, tiny_backbone_dir

    if spec == "default":
        return default_backbone_dir()
    if spec == "tiny":
        path = Path(tempfile.gettempdir()) / "l4s-testbed-tiny-llama"
        if not (path / "config.json").exists():
            tiny_backbone_dir(path, arch="llama", hidden=256, layers=4, heads=4)
        return path
    return Path(spec)


def _guard(control: str, decider, setting: float | str | None):
    """The guard a policy acts with: ``setting`` (an ABR margin in s or an AQM utilisation, or none), else the
    checkpoint's (``stall_guard_s`` for ABR, ``idle_guard_utilisation`` for AQM)."""
    from agents.abr.guard import StallGuard
    from agents.aqm.guard import IdleGuard

    key = "stall_guard_s" if control == "abr" else "idle_guard_utilisation"
    if setting is None:
        setting = getattr(getattr(decider, "config", None), key, None)
    if setting is None or str(setting).lower() in ("none", "off", ""):
        return None
    if control == "abr":
        return StallGuard(float(setting))
    return IdleGuard(_action_grid(decider), utilisation=float(setting))


def _action_grid(decider) -> np.ndarray:
    """The p' of each AQM action index of ``decider``."""
    values = decider.action_values
    return np.asarray(values if values is not None else aqm_action_grid(decider.n_actions), dtype=np.float64)


class LlmPolicy:
    """An ``llm`` policy for the agent process (see the module docstring)."""

    name = "llm"

    def __init__(
        self,
        control: str,
        checkpoint: str | None = None,
        backbone: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        deadline_ms: float | None = None,
        fallback: Policy | None = None,
        n_actions: int | None = None,
        decider=None,
        stall_guard_s: float | str | None = None,
        idle_guard: float | str | None = None,
    ):
        from llm.inference import LlmDecider, load_decider

        self.control = control
        if decider is not None:  # an in-memory policy (closed-loop selection while training, server streams)
            self.decider = decider
        else:
            checkpoint = checkpoint or _checkpoint_from_env(control)
            backbone = backbone or os.environ.get("TESTBED_LLM_BACKBONE")
            if checkpoint is None and backbone is None:
                from llm.shipped import default_checkpoint

                checkpoint = default_checkpoint(control)
                if checkpoint is None:
                    raise ValueError(f"no {control} checkpoint: pass checkpoint=DIR (--llm-checkpoint), or a backbone "
                                     "for an untrained policy (--llm-backbone tiny|default|DIR)")
            if checkpoint is not None:
                self.decider = load_decider(checkpoint, device=device, dtype=dtype)
            else:
                if control == "aqm":
                    n, fields = int(n_actions or 17), AqmObservation.field_names()
                else:
                    n = int(n_actions or DEFAULT_ABR_LEVELS)
                    fields = AbrObservation.field_names(n)
                self.decider = LlmDecider.untrained(control, _backbone_dir(backbone), n, obs_fields=fields,
                                                    device=device, dtype=dtype)
            if self.decider.task != control:
                raise ValueError(f"checkpoint {checkpoint} is an {self.decider.task} policy, not {control}")
        if control == "aqm" and stall_guard_s is not None:
            raise ValueError("stall_guard_s is for ABR policies, not aqm")
        if control == "abr" and idle_guard is not None:
            raise ValueError("idle_guard is for AQM policies, not abr")
        self.guard = _guard(control, self.decider, stall_guard_s if control == "abr" else idle_guard)
        self.deadline_s = None if deadline_ms in (None, "", "none") else float(deadline_ms) / 1e3
        if self.deadline_s is not None and fallback is None:
            raise ValueError("a decision deadline needs a fallback policy (agents.registry builds it from fallback=NAME)")
        # The fallback only acts when a deadline is missed: without a deadline there is none to keep current.
        self.fallback: Policy | None = fallback if self.deadline_s is not None else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm") if self.deadline_s else None
        self._pending: Future | None = None
        self._reward = 0.0
        self.last_fallback = False
        self.fallbacks = 0
        self.decisions = 0
        self.latency_ms: list[float] = []

    def reset(self) -> None:
        self._settle()
        self.decider.reset()
        if self.guard is not None:
            self.guard.reset()
        if self.fallback is not None:
            self.fallback.reset()
        self._reward = 0.0

    def observe_reward(self, reward: float) -> None:
        self._reward = float(reward)
        if self.fallback is not None:
            observe_reward(self.fallback, reward)

    def _settle(self) -> None:
        """Let a late inference finish so the KV cache holds every step."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def fork(self) -> LlmPolicy:
        """A policy for another stream that shares this one's model (the policy server's streams)."""
        deadline_ms = None if self.deadline_s is None else self.deadline_s * 1e3
        guard = "none" if self.guard is None else (
            self.guard.margin_s if self.control == "abr" else self.guard.utilisation)
        return LlmPolicy(self.control, decider=self.decider.fork(), deadline_ms=deadline_ms,
                         fallback=copy.deepcopy(self.fallback),
                         **{"stall_guard_s" if self.control == "abr" else "idle_guard": guard})

    @property
    def batchable(self) -> bool:
        """Whether :func:`act_batch` may decide for it (no deadline thread; a decision transformer)."""
        from llm.inference import LlmDecider

        return self._pool is None and isinstance(self.decider, LlmDecider)

    def features(self, obs: AqmObservation | AbrObservation) -> dict[str, float]:
        """The observation by field name, as the decider reads it."""
        names = AqmObservation.field_names() if self.control == "aqm" else AbrObservation.field_names(obs.n_levels)
        return dict(zip(names, obs.to_vector().tolist(), strict=True))

    def to_action(self, index: int) -> float | int:
        """The policy's answer for an action index: p' for AQM (the expected p' when the checkpoint decodes
        so, see :meth:`llm.inference.LlmDecider.expected_p_prime`), the quality index for ABR."""
        if self.control != "aqm":
            return int(index)
        if getattr(getattr(self.decider, "config", None), "decode", "argmax") != "expected":
            return float(_action_grid(self.decider)[index])
        p_prime = self.decider.expected_p_prime()
        self._play_p_prime(p_prime, index)
        return p_prime

    def _play_p_prime(self, p_prime: float, decided: int) -> None:
        """Make the grid index nearest the p' applied the next step's action token, if it is not ``decided``."""
        from llm.features import p_prime_to_index

        played = getattr(self.decider, "played", None)
        index = int(p_prime_to_index(p_prime, _action_grid(self.decider)))
        if played is not None and index != decided:
            played(index)

    def act(self, obs: AqmObservation | AbrObservation) -> float | int:
        features = self.features(obs)
        fallback_action = self.fallback.act(obs) if self.fallback is not None else None
        self.decisions += 1
        t0 = time.perf_counter()
        if self._pool is None:
            index = self.decider.decide(features, self._reward)
        else:
            # One inference thread, in order: a late decision or a slide still running is waited for within
            # the deadline, which counts from the state's arrival.
            self._pending = self._pool.submit(self.decider.decide, features, self._reward)
            try:
                index = self._pending.result(timeout=self.deadline_s)
                self._pending = None
            except FutureTimeout:
                self.latency_ms.append((time.perf_counter() - t0) * 1e3)
                self.last_fallback = True
                self.fallbacks += 1
                return fallback_action
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        self.last_fallback = False
        return self.guarded(obs, self.to_action(index))

    def guarded(self, obs: AqmObservation | AbrObservation, action: float | int) -> float | int:
        """The action, lowered by the guard if there is one (ABR's stall guard, AQM's idle guard); a lowered
        action becomes the model's history (the quality played, the p' applied), as it is in training."""
        if self.guard is None:
            return action
        limited = self.guard.limit(obs, action)
        if limited == action:
            return limited
        if self.control == "aqm":
            self._play_p_prime(limited, -1)
        elif (played := getattr(self.decider, "played", None)) is not None:  # an MLP reads it from the state
            played(limited)
        return limited

    def prepare(self) -> None:
        """Slide the model's window now if the next decision would (a slide's re-encoding is the tail of the
        decision time); with a deadline on the inference thread, so the next ``act`` waits only for what is
        left of it."""
        prepare = getattr(self.decider, "prepare", None)  # an MLP decider has no window to slide
        if prepare is None:
            return
        if self._pool is None:
            prepare()
        else:
            self._pending = self._pool.submit(prepare)

    def close(self) -> None:
        self._settle()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def act_batch(policies: list[LlmPolicy], observations: list) -> list[float | int]:
    """Decide for many streams of one model in as few forward passes as their contexts allow.

    Equal, up to float rounding, to calling ``act`` on each (see :func:`llm.inference.decide_batch`).
    """
    from llm.inference import decide_batch

    if not policies:
        return []
    if any(not p.batchable for p in policies):
        raise ValueError("act_batch needs llm policies without a decision deadline")
    indices = decide_batch([p.decider for p in policies], [p.features(o) for p, o in zip(policies, observations,
                                                                                          strict=True)],
                           [p._reward for p in policies])
    for p in policies:
        p.decisions += 1
        p.latency_ms.append(p.decider.latency_ms[-1])
        p.last_fallback = False
    return [p.guarded(o, p.to_action(i)) for p, o, i in zip(policies, observations, indices, strict=True)]
