"""Experience pools: trajectories read from ``decisions.parquet`` files, stored as parquet + manifest.json.

Reading a decisions file (columns and metadata as documented for the run directory):

* ``roles`` says which rows form trajectories: ``"acting"`` (the default), ``"shadow"``
  (each shadow policy forms its own episodes with the *acting* policy's states and rewards:
  a teacher's labels on the states a learner visited, as DAgger relabels them; good for
  imitation, not for return conditioning), or both;
* episodes are split by file and ``control_point``, in file order, and also after a row with
  ``done`` or where ``step`` does not increase;
* reward alignment: the ``reward`` of row t+1 is the reward of the action of row t, so an
  episode of n rows gives n - 1 transitions and the final row supplies the last reward (its
  own action, if any, never got one);
* actions: ABR ``action[0]`` is the quality index; AQM ``action[0]`` is the p' applied,
  mapped to the nearest index of the p' grid in log terms; where a p' lies between grid values
  (a continuous teacher), the episode also keeps its two-hot weights on the neighbouring values
  (``soft``: imitation learns those, so the expected log p' of the policy reproduces the p');
* action values: a teacher that scores every action (the clairvoyant ABR planner) leaves them
  in the row's info JSON as ``action_scores``; they become the episode's ``targets`` (NaN where
  a row has none), which a learner can regress instead of imitating the chosen action.

The pool directory holds ``steps.parquet`` (one row per transition, raw observations kept so
the pool can be featurised again) and ``manifest.json`` (task, obs_fields, n_actions, the
fitted feature statistics, reward scale, sources and counts). No pickle anywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llm.features import (
    AQM_HISTORY_TICKS,
    AQM_N_ACTIONS,
    FeatureSpec,
    RewardScale,
    feature_spec,
    p_prime_grid,
    p_prime_to_index,
    p_prime_two_hot,
)

STEPS_FILE = "steps.parquet"
MANIFEST_FILE = "manifest.json"
POOL_FORMAT = 2


@dataclass
class Episode:
    """One trajectory: ``obs[t]`` (raw, by obs_fields), ``actions[t]`` (index), ``rewards[t]`` (raw reward of action t)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    source: str
    control_point: str
    policy: str
    role: str
    #: (T, n_actions) value of every action at each step, where the teacher gave them (else NaN rows)
    targets: np.ndarray | None = None
    #: the actions really taken, where they differ from ``actions`` (a shadow's relabels of another policy's
    #: run): what a sequence model sees in its history, while ``actions``/``targets`` are what it learns
    taken: np.ndarray | None = None
    #: (T, n_actions) label weights where an AQM p' lies between grid values (two-hot in log p'); None: one-hot
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def history_actions(self) -> np.ndarray:
        return self.actions if self.taken is None else self.taken

    def target_rows(self, n_actions: int) -> np.ndarray:
        return self.targets if self.targets is not None else np.full((len(self), n_actions), np.nan)

    def label_rows(self, n_actions: int) -> np.ndarray:
        """The imitation label of each step as weights over the actions (one-hot where no ``soft`` labels)."""
        return self.soft if self.soft is not None else np.eye(n_actions)[self.actions]


@dataclass
class Pool:
    """A loaded pool: its manifest and its episodes."""

    manifest: dict
    episodes: list[Episode]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def n_actions(self) -> int:
        return int(self.manifest["n_actions"])

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.manifest["features"])

    @property
    def rewards(self) -> RewardScale:
        return RewardScale(**self.manifest["rewards"])

    @property
    def n_steps(self) -> int:
        return sum(len(e) for e in self.episodes)

    def check_compatible(self, other: Pool) -> None:
        """Raise unless ``other`` has the same task, observation layout and action space."""
        for key in ("task", "obs_fields", "n_actions"):
            if self.manifest[key] != other.manifest[key]:
                raise ValueError(f"pools differ in {key}: {self.manifest[key]!r} vs {other.manifest[key]!r}")

    def check_has_values(self) -> None:
        """Action-value regression needs some steps with teacher action values: fail before training if none."""
        if not any(ep.targets is not None for ep in self.episodes):
            raise ValueError("action-value regression needs steps with teacher action values (action_scores in "
                             "the decisions' info): collect with a teacher that scores its actions (oracle, rollout, hindsight)")

    def flat(self, features: FeatureSpec, rewards: RewardScale, max_timestep: int) -> dict[str, np.ndarray]:
        """All steps concatenated, scaled for the model with the given (training pool's) statistics.

        Returns ``states`` (N, D) float32, ``actions`` (N,), ``returns`` (N,) returns-to-go over
        the pool's maximum return, ``timesteps`` (N,) clipped to ``max_timestep``, and
        ``episode_start`` / ``episode_end`` (N,), the index range of each step's episode,
        ``history_actions`` (N,) the actions really taken (the sequence model's context), and
        ``advantages`` (N, n_actions): each action's value minus the best one's, in scaled reward
        units and clipped at the reward floor (NaN rows where the teacher gave no values), and, where
        an episode has two-hot labels, ``soft`` (N, n_actions): every step's label weights.
        """
        states, actions, history, returns, timesteps, starts, ends, advantages = [], [], [], [], [], [], [], []
        offset = 0
        for ep in self.episodes:
            n = len(ep)
            states.append(features.normalise(features.raw_features(ep.obs)))
            actions.append(ep.actions.astype(np.int64))
            history.append(ep.history_actions.astype(np.int64))
            returns.append(rewards.returns_to_go(ep.rewards).astype(np.float32))
            timesteps.append(np.minimum(np.arange(n), max_timestep))
            starts.append(np.full(n, offset))
            ends.append(np.full(n, offset + n))
            values = ep.target_rows(self.n_actions)
            with np.errstate(invalid="ignore"):
                advantage = (values - values.max(axis=1, keepdims=True)) / rewards.scale
            advantages.append(np.maximum(advantage, rewards.floor / rewards.scale).astype(np.float32))
            offset += n
        soft = {}
        if any(ep.soft is not None for ep in self.episodes):
            soft["soft"] = np.concatenate([ep.label_rows(self.n_actions) for ep in self.episodes]).astype(np.float32)
        return soft | {
            "states": np.concatenate(states),
            "actions": np.concatenate(actions),
            "history_actions": np.concatenate(history),
            "returns": np.concatenate(returns),
            "timesteps": np.concatenate(timesteps).astype(np.int64),
            "episode_start": np.concatenate(starts).astype(np.int64),
            "episode_end": np.concatenate(ends).astype(np.int64),
            "advantages": np.concatenate(advantages),
        }


def _metadata(path: Path) -> dict[str, str]:
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def _obs_matrix(column: pa.ChunkedArray, width: int, path: Path) -> np.ndarray:
    values = column.combine_chunks()
    lengths = values.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and not np.all(lengths == width):
        raise ValueError(f"{path}: obs vectors of length {sorted(set(lengths.tolist()))}, obs_fields name {width}")
    return values.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(lengths), width)


def _split_points(steps: np.ndarray, done: np.ndarray) -> list[int]:
    """Row indices where a new episode starts (after a done row, or where step does not increase)."""
    cuts = [i for i in range(1, len(steps)) if done[i - 1] or steps[i] <= steps[i - 1]]
    return [0, *cuts, len(steps)]


ROLES = ("acting", "shadow")


def _check_roles(roles: tuple[str, ...]) -> tuple[str, ...]:
    if not roles or any(r not in ROLES for r in roles):
        raise ValueError(f"roles must be a non-empty subset of {ROLES}, got {roles!r}")
    return tuple(roles)


def read_decisions(
    path: str | Path, task: str, n_actions: int | None = None, roles: tuple[str, ...] = ("acting",)
) -> tuple[list[str], list[Episode], int]:
    """Episodes of one decisions.parquet: (obs_fields, episodes, episodes skipped for having < 2 rows)."""
    path = Path(path)
    meta = _metadata(path)
    for key in ("obs_fields", "control"):
        if key not in meta:
            raise ValueError(f"{path}: parquet metadata has no {key!r} (not a decisions.parquet?)")
    if meta["control"] != task:
        raise ValueError(f"{path}: control is {meta['control']!r}, not {task!r}")
    obs_fields = json.loads(meta["obs_fields"])
    table = pq.read_table(
        path, columns=["control_point", "step", "policy", "role", "obs", "action", "reward", "done", "info"]
    )
    obs = _obs_matrix(table.column("obs"), len(obs_fields), path)
    # The episode-ending row carries no action (an empty list): read it as NaN.
    actions = table.column("action")
    has_action = pc.greater(pc.list_value_length(actions), 0).to_numpy(zero_copy_only=False)
    padded = pc.if_else(pc.greater(pc.list_value_length(actions), 0), actions, pa.scalar([np.nan], actions.type))
    action = pc.list_element(padded, 0).to_numpy(zero_copy_only=False).astype(np.float64)
    action[~has_action] = np.nan
    reward = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
    step = table.column("step").to_numpy(zero_copy_only=False)
    done = table.column("done").to_numpy(zero_copy_only=False).astype(bool)
    control_point = np.asarray(table.column("control_point").to_pylist(), dtype=object)
    policy = np.asarray(table.column("policy").to_pylist(), dtype=object)
    role = np.asarray(table.column("role").to_pylist(), dtype=object)
    infos = table.column("info").to_pylist()

    if task == "abr":
        n = sum(1 for f in obs_fields if f.startswith("bitrates_bps."))
        if n_actions is not None and n_actions != n:
            raise ValueError(f"{path}: ABR has {n} quality levels, n_actions {n_actions} was asked for")
        n_actions = n
    grid = p_prime_grid(n_actions or AQM_N_ACTIONS) if task == "aqm" else None

    roles = _check_roles(roles)
    groups: list[tuple[np.ndarray, str]] = []
    for cp in dict.fromkeys(control_point.tolist()):
        if "acting" in roles:
            groups.append((np.flatnonzero((control_point == cp) & (role == "acting")), "acting"))
        if "shadow" in roles:
            shadow = (control_point == cp) & (role == "shadow")
            for name in dict.fromkeys(policy[shadow].tolist()):
                groups.append((np.flatnonzero(shadow & (policy == name)), "shadow"))

    acting_action: dict[str, dict[int, float]] = {}
    if "shadow" in roles:
        for i in np.flatnonzero((role == "acting") & has_action):
            acting_action.setdefault(str(control_point[i]), {})[int(step[i])] = action[i]

    episodes, skipped = [], 0
    for rows, group_role in groups:
        bounds = _split_points(step[rows], done[rows])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            ep_rows = rows[a:b]
            if len(ep_rows) < 2:
                skipped += 1
                continue
            acts = action[ep_rows[:-1]]
            if np.any(~np.isfinite(acts)):
                raise ValueError(f"{path}: missing or non-finite action in control point {control_point[ep_rows[0]]!r}")
            indices = _action_indices(acts, task, grid, n_actions, path)
            soft = p_prime_two_hot(acts, grid) if task == "aqm" else None
            if soft is not None and np.allclose(soft.max(axis=1), 1.0):  # every p' on the grid: one-hot
                soft = None
            taken = None
            if group_role == "shadow":  # the acting policy's actions at the same steps: what really happened
                acting = acting_action.get(str(control_point[ep_rows[0]]), {})
                really = np.array([acting.get(int(s), np.nan) for s in step[ep_rows[:-1]]])
                if np.all(np.isfinite(really)):
                    taken = _action_indices(really, task, grid, n_actions, path)
            episodes.append(
                Episode(
                    obs=obs[ep_rows[:-1]],
                    actions=indices.astype(np.int64),
                    rewards=reward[ep_rows[1:]],
                    source=str(path),
                    control_point=str(control_point[ep_rows[0]]),
                    policy=str(policy[ep_rows[0]]),
                    role=group_role,
                    targets=_action_scores([infos[i] for i in ep_rows[:-1]], n_actions or AQM_N_ACTIONS, path),
                    taken=taken,
                    soft=soft,
                )
            )
    return obs_fields, episodes, skipped


def _action_indices(acts: np.ndarray, task: str, grid: np.ndarray | None, n_actions: int | None,
                    path: Path) -> np.ndarray:
    """Logged actions as indices: p' to its grid index (AQM), the quality level itself (ABR)."""
    if task == "aqm":
        return p_prime_to_index(acts, grid).astype(np.int64)
    indices = np.rint(acts).astype(np.int64)
    if np.any(indices < 0) or np.any(indices >= n_actions):
        raise ValueError(f"{path}: ABR quality index outside [0, {n_actions})")
    return indices


def _action_scores(infos: list[str | None], n_actions: int, path: Path) -> np.ndarray | None:
    """The ``action_scores`` of each row's info JSON as (T, n_actions), NaN rows where absent; None if none has them."""
    if not any(info and '"action_scores"' in info for info in infos):
        return None
    rows = np.full((len(infos), n_actions), np.nan)
    for t, info in enumerate(infos):
        scores = json.loads(info).get("action_scores") if info else None
        if scores is not None:
            if len(scores) != n_actions:
                raise ValueError(f"{path}: action_scores of length {len(scores)}, the task has {n_actions} actions")
            rows[t] = scores
    return rows


def _episodes_table(episodes: list[Episode]) -> pa.Table:
    keys = ("episode", "step", "obs", "action", "taken", "reward", "targets", "soft", "source", "control_point",
            "policy", "role")
    rows = {k: [] for k in keys}
    for i, ep in enumerate(episodes):
        n = len(ep)
        rows["episode"] += [i] * n
        rows["step"] += list(range(n))
        rows["obs"] += list(ep.obs)
        rows["action"] += ep.actions.tolist()
        rows["taken"] += ep.history_actions.tolist()
        rows["reward"] += ep.rewards.tolist()
        rows["targets"] += ep.targets.tolist() if ep.targets is not None else [[]] * n
        rows["soft"] += ep.soft.tolist() if ep.soft is not None else [[]] * n
        for key in ("source", "control_point", "policy", "role"):
            rows[key] += [getattr(ep, key)] * n
    return pa.table(
        {
            "episode": pa.array(rows["episode"], pa.int32()),
            "step": pa.array(rows["step"], pa.int32()),
            "obs": pa.array([o.tolist() for o in rows["obs"]], pa.list_(pa.float64())),
            "action": pa.array(rows["action"], pa.int32()),
            "taken": pa.array(rows["taken"], pa.int32()),
            "reward": pa.array(rows["reward"], pa.float64()),
            "targets": pa.array(rows["targets"], pa.list_(pa.float64())),
            "soft": pa.array(rows["soft"], pa.list_(pa.float64())),
            "source": pa.array(rows["source"], pa.string()),
            "control_point": pa.array(rows["control_point"], pa.string()),
            "policy": pa.array(rows["policy"], pa.string()),
            "role": pa.array(rows["role"], pa.string()),
        }
    )


def fit_statistics(spec: FeatureSpec, episodes: list[Episode]) -> tuple[FeatureSpec, RewardScale]:
    """Feature statistics and the largest scaled return of a set of episodes (the training data's, never a test set's).

    Rewards are scaled by the task's fixed constant (:data:`llm.features.REWARD_SCALING`), not by the pool.
    """
    fitted = spec.fit(np.concatenate([spec.raw_features(ep.obs) for ep in episodes]))
    rewards = np.concatenate([ep.rewards for ep in episodes])
    if not np.all(np.isfinite(rewards)):
        raise ValueError("rewards contain NaN or inf")
    unit = RewardScale.for_task(spec.task)
    max_return = max(float(unit.scale_rewards(ep.rewards).sum()) for ep in episodes)
    return fitted, RewardScale.for_task(spec.task, max_return)


def _steps_by_policy(episodes: list[Episode]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for ep in episodes:
        counts[ep.policy] += len(ep)
    return dict(counts)


def build_pool(
    paths: list[str | Path | tuple[str | Path, tuple[str, ...]]],
    out_dir: str | Path,
    task: str,
    n_actions: int | None = None,
    roles: tuple[str, ...] = ("acting",),
    history_ticks: int = AQM_HISTORY_TICKS,
) -> Pool:
    """Read decisions files into a pool, fit feature and reward statistics, write it to ``out_dir``.

    ``n_actions``: AQM grid size (default 17); for ABR it is the number of quality levels.
    An entry of ``paths`` may be ``(path, roles)`` to read other roles from that file than
    ``roles`` (a teacher's own runs beside DAgger runs whose shadow rows are the labels).
    """
    if not paths:
        raise ValueError("build_pool needs at least one decisions.parquet")
    sources = [(p[0], tuple(p[1])) if isinstance(p, tuple) else (p, roles) for p in paths]
    paths = [p for p, _ in sources]
    obs_fields: list[str] | None = None
    episodes: list[Episode] = []
    skipped = 0
    for path, file_roles in sources:
        fields, eps, n_skipped = read_decisions(path, task, n_actions, file_roles)
        if obs_fields is None:
            obs_fields = fields
        elif fields != obs_fields:
            raise ValueError(f"{path}: obs_fields differ from those of {paths[0]} (one pool holds one layout)")
        episodes += eps
        skipped += n_skipped
    if not episodes:
        raise ValueError(f"no episode with at least two rows of the chosen roles in {len(paths)} file(s)")

    spec, scale = fit_statistics(feature_spec(task, obs_fields, history_ticks), episodes)
    if task == "aqm":
        n_actions = n_actions or AQM_N_ACTIONS
    else:
        n_actions = sum(1 for f in obs_fields if f.startswith("bitrates_bps."))

    manifest = {
        "format": POOL_FORMAT,
        "task": task,
        "obs_fields": obs_fields,
        "n_actions": n_actions,
        "action_values": p_prime_grid(n_actions).tolist() if task == "aqm" else None,
        "features": spec.to_dict(),
        "rewards": asdict(scale),
        "max_episode_steps": max(len(ep) for ep in episodes),
        "roles": sorted({r for _, file_roles in sources for r in _check_roles(file_roles)}),
        "sources": [str(Path(p).resolve()) for p in paths],
        "source_roles": [list(file_roles) for _, file_roles in sources],
        "counts": {
            "files": len(paths),
            "episodes": len(episodes),
            "steps": sum(len(ep) for ep in episodes),
            "skipped_episodes": skipped,
            "steps_by_policy": _steps_by_policy(episodes),
            "actions": np.bincount(np.concatenate([ep.actions for ep in episodes]), minlength=n_actions).tolist(),
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(_episodes_table(episodes), out / STEPS_FILE)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return Pool(manifest, episodes)


def load_pool(pool_dir: str | Path) -> Pool:
    """Read a pool written by :func:`build_pool`."""
    pool_dir = Path(pool_dir)
    manifest_path = pool_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{pool_dir} is not an experience pool (no {MANIFEST_FILE})")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != POOL_FORMAT:
        raise ValueError(f"{manifest_path}: pool format {manifest.get('format')!r}, this code reads {POOL_FORMAT}")
    table = pq.read_table(pool_dir / STEPS_FILE)
    width = len(manifest["obs_fields"])
    obs = _obs_matrix(table.column("obs"), width, pool_dir / STEPS_FILE)
    episode = table.column("episode").to_numpy()
    action = table.column("action").to_numpy().astype(np.int64)
    # pools written before the taken column: the history is the labels (as they were trained)
    taken = table.column("taken").to_numpy().astype(np.int64) if "taken" in table.column_names else action
    reward = table.column("reward").to_numpy()
    text = {k: table.column(k).to_pylist() for k in ("source", "control_point", "policy", "role")}
    targets = table.column("targets").to_pylist()
    soft = table.column("soft").to_pylist() if "soft" in table.column_names else [[]] * len(episode)
    bounds = np.flatnonzero(np.diff(episode)) + 1
    episodes = []
    for rows in np.split(np.arange(len(episode)), bounds):
        i = rows[0]
        episodes.append(
            Episode(
                obs=obs[rows],
                actions=action[rows],
                rewards=reward[rows],
                source=text["source"][i],
                control_point=text["control_point"][i],
                policy=text["policy"][i],
                role=text["role"][i],
                targets=_stored_targets([targets[r] for r in rows], int(manifest["n_actions"])),
                taken=None if np.array_equal(taken[rows], action[rows]) else taken[rows],
                soft=_stored_targets([soft[r] for r in rows], int(manifest["n_actions"]), fill=0.0),
            )
        )
    return Pool(manifest, episodes)


def _stored_targets(rows: list[list[float]], n_actions: int, fill: float = np.nan) -> np.ndarray | None:
    if not any(rows):
        return None
    return np.array([r if r else [fill] * n_actions for r in rows], dtype=np.float64)
