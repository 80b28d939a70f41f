"""The agent loop: answer one control point's states with a policy, log every decision.

``serve`` is the library function behind ``python -m agents serve``; tests and
the orchestrator call it directly with objects. Each observation is shown to
the acting policy (whose action goes back on the wire at once) and then to
every shadow policy (whose would-be action is only logged), so any run can
become training data for the others without a shadow delaying the acting one.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from agents.decisions import DecisionLog, stop_signals_deferred, warm_up
from agents.env import OpenGymEnv
from agents.policy import Policy, check_control, observe_reward, prepare_next
from agents.protocol.control_points import AbrObservation, AqmObservation, aqm_action_grid

_log = logging.getLogger(__name__)

DECISIONS_FILE = "decisions.parquet"


@dataclass
class ServeResult:
    episodes: int
    decisions: int  # acting decisions sent over the wire, all episodes together
    decisions_path: Path | None


def obs_fields(control: str, obs_space: spaces.Space) -> list[str]:
    """Names of the observation entries, from the control point's layout."""
    size = int(np.prod(obs_space.shape)) if obs_space.shape is not None else 0
    if control == "aqm":
        names = AqmObservation.field_names()
        if size != len(names):
            raise ValueError(f"the simulation's observation space {obs_space} is not an AQM observation "
                             f"({len(names)} values)")
        return names
    n_levels = AbrObservation.from_vector(np.zeros(size)).n_levels
    return AbrObservation.field_names(n_levels)


_AQM_SIZE = len(AqmObservation.field_names())


def observation(control: str, vec: np.ndarray) -> AqmObservation | AbrObservation:
    """The control point's observation dataclass for a received vector."""
    if control == "abr":
        return AbrObservation.from_vector(vec)
    if vec.size != _AQM_SIZE:
        raise ValueError(f"AQM observation needs {_AQM_SIZE} values, got {vec.size}")
    # Positional, in field order: what from_vector does, without its per-call name lookups (hot path).
    return AqmObservation(*vec.tolist())


@functools.lru_cache(maxsize=8)
def _log_bounds(n_actions: int) -> list[float]:
    """log10 boundaries between neighbouring grid indices: p' above bound i maps to index i + 1 or more."""
    logs = np.log10(aqm_action_grid(n_actions)[1:])
    step = float(logs[1] - logs[0]) if logs.size > 1 else 1.0
    # p' = 0 counts as one grid step below p_min on the log scale, so its boundary is half a step below p_min.
    return [float(logs[0] - step / 2), *((logs[:-1] + logs[1:]) / 2).tolist()]


def aqm_grid_index(p_prime: float, n_actions: int) -> int:
    """Index of the p' on ``aqm_action_grid(n_actions)`` nearest to ``p_prime`` in log terms (ties go down)."""
    if math.isnan(p_prime):
        raise ValueError("AQM policy answered p' = NaN")
    if p_prime <= 0.0:
        return 0
    return bisect.bisect_left(_log_bounds(n_actions), math.log10(p_prime))


def to_space_action(control: str, raw: float | int, action_space: spaces.Space) -> int | np.ndarray:
    """The wire action for a policy's answer: a grid index or [p'] for AQM, the quality index for ABR."""
    if isinstance(action_space, spaces.Discrete):
        if control == "aqm":
            return aqm_grid_index(float(raw), int(action_space.n))
        return int(raw)
    if isinstance(action_space, spaces.Box):
        return np.full(action_space.shape, raw, dtype=action_space.dtype)
    raise ValueError(f"{control} control point with action space {action_space}: expected Discrete or Box")


def _action_values(action: int | np.ndarray) -> np.ndarray:
    return np.asarray(action, dtype=np.float64).ravel()


def _decide(policy: Policy, obs: AqmObservation | AbrObservation, control: str,
            action_space: spaces.Space) -> tuple[int | np.ndarray, float]:
    """``policy``'s wire action for ``obs`` and how long the policy took to choose it (ms)."""
    t0 = time.perf_counter()
    raw = policy.act(obs)
    decision_ms = (time.perf_counter() - t0) * 1e3
    return to_space_action(control, raw, action_space), decision_ms


def _record(log: DecisionLog | None, row: dict[str, Any], policy: Policy, role: str, action: int | np.ndarray,
            decision_ms: float) -> None:
    """One decision's row: ``row`` holds what every policy saw at this step."""
    if log is not None:
        log.append(**row, policy=policy.name, role=role, action=_action_values(action), decision_ms=decision_ms,
                   fallback=bool(getattr(policy, "last_fallback", False)))


def _sim_time_s(info: dict[str, Any]) -> float:
    try:
        return float(info.get("sim_time_s", math.nan))
    except (TypeError, ValueError):
        return math.nan


def serve(
    env: OpenGymEnv,
    policy: Policy,
    *,
    shadows: Sequence[Policy] = (),
    out_dir: str | Path | None = None,
    episodes: int = 1,
    control_point: str | None = None,
) -> ServeResult:
    """Answer ``episodes`` simulations on ``env`` with ``policy``; log decisions to ``out_dir``.

    With ``out_dir``, every decision goes to ``out_dir/decisions.parquet``
    (acting and shadow rows; the episode-ending observation adds one acting
    row with ``done=True``, no action and ``decision_ms`` NaN, so the last
    reward is on the record too). ``sim_time_s`` is the ``sim_time_s`` key of
    the state's info JSON (NaN when absent).
    """
    control = check_control(policy.control)
    for shadow in shadows:
        if shadow.control != control:
            raise ValueError(f"shadow policy {shadow.name!r} is for {shadow.control}, the acting one for {control}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    control_point = control_point or control
    if out_dir is not None:
        warm_up()
    deciders = [policy, *shadows]
    log: DecisionLog | None = None
    decisions = 0
    try:
        for episode in range(episodes):
            _log.info("episode %d/%d: waiting for a simulation at %s", episode + 1, episodes, env.endpoint)
            obs, info = env.reset()
            _log.info("simulation pid %s connected: obs %s, actions %s",
                      env.sim_process_id, env.observation_space, env.action_space)
            if log is None and out_dir is not None:
                log = DecisionLog(Path(out_dir) / DECISIONS_FILE, control_point, control,
                                  obs_fields(control, env.observation_space), policy.name)
            for p in deciders:
                p.reset()
            state = env.last_state
            done = state.game_over
            step = 0
            while True:
                obs_vec = np.asarray(obs, dtype=np.float64).ravel()
                sim_time_s = _sim_time_s(info)
                if step > 0:
                    for p in deciders:
                        observe_reward(p, state.reward)
                if done:
                    if log is not None:
                        log.append(step=step, sim_time_s=sim_time_s, policy=policy.name, role="acting", obs=obs_vec,
                                   action=(), reward=state.reward, decision_ms=math.nan, done=True, info=state.info)
                    break
                obs_view = observation(control, obs_vec)
                row = {"step": step, "sim_time_s": sim_time_s, "obs": obs_vec, "reward": state.reward,
                       "info": state.info}
                # The acting answer goes out first (with its row: a stop signal gets both or neither); the
                # shadows decide after it, while the simulation runs on, so they never delay it.
                action, decision_ms = _decide(policy, obs_view, control, env.action_space)
                with stop_signals_deferred():
                    env.reply(action)
                    _record(log, row, policy, "acting", action, decision_ms)
                prepare_next(policy)
                for shadow in shadows:
                    _record(log, row, shadow, "shadow", *_decide(shadow, obs_view, control, env.action_space))
                    prepare_next(shadow)
                obs, _reward, done, _truncated, info = env.next_state()
                state = env.last_state
                decisions += 1
                step += 1
            _log.info("episode %d/%d ended (%s) after %d decisions",
                      episode + 1, episodes, info.get("reason", "game over"), step)
            if info.get("error"):
                _log.warning("the simulation ended the episode on an error: %s", info["error"])
    finally:
        if log is not None:
            log.close()
    return ServeResult(episodes=episodes, decisions=decisions, decisions_path=None if log is None else log.path)
