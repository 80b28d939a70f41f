"""Task feature specs: which observation fields become which state tokens, and how they are scaled.

Observations arrive as flat vectors whose entries are named by ``obs_fields`` (the
strings the simulator's observation layouts produce). A :class:`FeatureSpec` turns
an episode's observation rows into one feature vector per step, split into tokens:

* ``scalar`` tokens: a few related values, each scaled on its own, encoded by a
  small MLP (NetLLM's linear encoder);
* ``series`` tokens: one quantity over time (or over quality levels), scaled with
  one shared statistic so its shape survives, encoded by a 1-D convolution.

Every value first goes through a fixed transform (log for heavy-tailed rates,
bytes and counters, log-probability for p') and is then standardised with the
mean/std of a pool and clipped, so no raw counter (up to 1e10) reaches the model.
The statistics live in the checkpoint config next to the spec.

ABR (NetLLM's 6 state tokens and one more): last bitrate, buffer, throughput history,
download-time history, next chunk sizes at every level, chunks left, and the download time of
the next chunk at every level estimated from the recent throughputs.

AQM (9 state tokens): the AqmObservation fields in six groups (delays, queue
lengths, rates, utilisation, marks/drops, p') plus the last ``history_ticks``
ticks of queue delay, utilisation and p'. Ticks before the episode start are zero
(raw units), as the ABR histories are zero-padded at the front.

AQM actions index the p' grid ``[0] + logspace(log10(1e-4), 0, n_actions - 1)``
(default 17: 0, then 16 values from 1e-4 to 1, 4/15 of a decade apart). This
replicates the testbed's ``aqm_action_grid`` formula; ``llm`` imports nothing from
the testbed, and a test checks that the two agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

TASKS = ("abr", "aqm")

#: Default number of discrete AQM actions (p' grid size).
AQM_N_ACTIONS = 17
#: Smallest non-zero p' on the AQM grid.
AQM_P_MIN = 1e-4
#: Ticks of history the AQM state carries for its series tokens.
AQM_HISTORY_TICKS = 8

#: Standardised features are clipped to +-this many standard deviations.
FEATURE_CLIP = 10.0
#: Floor under p' before its log is taken (below the grid's smallest non-zero value).
_P_FLOOR = 1e-5


def _log1p(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0))


TRANSFORMS = {
    # Bounded or already well-scaled quantities (seconds of buffer, utilisation).
    "identity": lambda x: x,
    # Heavy-tailed non-negative quantities: rates in bit/s, bytes, packet counts.
    "log1p": _log1p,
    # Delays in seconds that matter at millisecond resolution (1 ms vs 15 ms vs 200 ms).
    "log1p_ms": lambda x: _log1p(x * 1e3),
    # Probabilities spanning decades (p' from 1e-4 to 1).
    "log10_prob": lambda x: np.log10(np.maximum(x, _P_FLOOR)),
}


def p_prime_grid(n_actions: int = AQM_N_ACTIONS, p_min: float = AQM_P_MIN) -> np.ndarray:
    """The p' value of each AQM action index: 0, then ``n_actions - 1`` log-spaced values from ``p_min`` to 1."""
    if n_actions < 2:
        raise ValueError(f"n_actions must be >= 2, got {n_actions}")
    if not 0.0 < p_min < 1.0:
        raise ValueError(f"p_min must be in (0, 1), got {p_min}")
    return np.concatenate([[0.0], np.logspace(np.log10(p_min), 0.0, n_actions - 1)])


def p_prime_to_index(p_prime: np.ndarray | float, grid: np.ndarray) -> np.ndarray:
    """Nearest grid index in log terms for logged continuous p' values.

    p' = 0 has no logarithm, so index 0 is placed one grid step below the smallest
    non-zero value: anything under half a step below ``grid[1]`` maps to 0.
    """
    p = np.asarray(p_prime, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any(p < 0.0) or np.any(p > 1.0):
        raise ValueError("AQM actions must be p' values in [0, 1] (is the action column a discrete index?)")
    log_p = np.log10(np.maximum(p, np.finfo(np.float64).tiny))
    return np.abs(log_p[..., None] - _log_anchors(grid)).argmin(axis=-1)


def _log_anchors(grid: np.ndarray) -> np.ndarray:
    """log10 of each grid value, with p' = 0 placed one grid step below the smallest non-zero value."""
    log_grid = np.log10(grid[1:])
    step = log_grid[1] - log_grid[0] if log_grid.size > 1 else 1.0
    return np.concatenate([[log_grid[0] - step], log_grid])


def p_prime_two_hot(p_prime: np.ndarray | float, grid: np.ndarray) -> np.ndarray:
    """Each p' as weights on its two neighbouring grid values, linear in log p' (..., len(grid)).

    The label a policy decoded by its expected log p' must learn to reproduce a continuous p': the
    weights' expected log p' is log p' itself (within the grid's range; p' = 0 and values under
    the smallest anchor put all weight on index 0), where the nearest index loses everything
    between two grid steps, a factor of 1.85 in p' at 17 values.
    """
    p = np.asarray(p_prime, dtype=np.float64)
    p_prime_to_index(p, grid)  # the same checks on the values
    anchors = _log_anchors(grid)
    log_p = np.clip(np.log10(np.maximum(p, np.finfo(np.float64).tiny)), anchors[0], anchors[-1])
    upper = np.clip(np.searchsorted(anchors, log_p, side="right"), 1, len(anchors) - 1)
    w = (log_p - anchors[upper - 1]) / (anchors[upper] - anchors[upper - 1])
    out = np.zeros(p.shape + (len(grid),))
    np.put_along_axis(out, (upper - 1)[..., None], (1.0 - w)[..., None], axis=-1)
    np.put_along_axis(out, upper[..., None], w[..., None], axis=-1)
    return out


@dataclass(frozen=True)
class TokenSpec:
    """One state token: ``width`` values, encoded as a ``scalar`` group or a ``series``."""

    name: str
    kind: str
    width: int
    transform: str

    def __post_init__(self) -> None:
        if self.kind not in ("scalar", "series"):
            raise ValueError(f"token {self.name!r}: kind must be 'scalar' or 'series', got {self.kind!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"token {self.name!r}: transform must be one of {sorted(TRANSFORMS)}")
        if self.width < 1:
            raise ValueError(f"token {self.name!r}: width must be >= 1, got {self.width}")


@dataclass
class FeatureSpec:
    """Maps observation rows (named by ``obs_fields``) to normalised per-step token features.

    ``mean``/``std`` hold one entry per feature value (length ``n_values``); they are
    empty until :meth:`fit` has seen a pool.
    """

    task: str
    obs_fields: list[str]
    tokens: list[TokenSpec]
    history_ticks: int = 1
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def n_values(self) -> int:
        return sum(t.width for t in self.tokens)

    @property
    def fitted(self) -> bool:
        return len(self.mean) == self.n_values

    def __post_init__(self) -> None:
        self._index = {n: i for i, n in enumerate(self.obs_fields)}

    def _column(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"{self.task} features need observation field {name!r}, not in obs_fields") from None

    def _columns(self, names: list[str]) -> list[int]:
        return [self._column(n) for n in names]

    def raw_features(self, obs: np.ndarray) -> np.ndarray:
        """Transformed (not yet standardised) features of each row of one episode, shape (T, n_values).

        Row t may depend on earlier rows (AQM histories), so pass the episode in order;
        rows before the first are treated as zeros.
        """
        obs = np.asarray(obs, dtype=np.float64)
        if obs.ndim != 2 or obs.shape[1] != len(self.obs_fields):
            raise ValueError(f"expected observations of shape (T, {len(self.obs_fields)}), got {obs.shape}")
        parts = _abr_extract(self, obs) if self.task == "abr" else _aqm_extract(self, obs)
        out = []
        for token, values in zip(self.tokens, parts, strict=True):
            out.append(TRANSFORMS[token.transform](values.reshape(len(obs), token.width)))
        return np.concatenate(out, axis=1)

    def fit(self, raw: np.ndarray) -> FeatureSpec:
        """A copy with mean/std from transformed feature rows; ``series`` tokens share one statistic."""
        raw = np.asarray(raw, dtype=np.float64)
        mean, std = np.empty(self.n_values), np.empty(self.n_values)
        start = 0
        for token in self.tokens:
            block = raw[:, start : start + token.width]
            if token.kind == "series":
                mean[start : start + token.width] = block.mean()
                std[start : start + token.width] = block.std()
            else:
                mean[start : start + token.width] = block.mean(axis=0)
                std[start : start + token.width] = block.std(axis=0)
            start += token.width
        std = np.where(std > 1e-8, std, 1.0)  # constant features carry no information: leave them at 0
        return replace(self, mean=mean.tolist(), std=std.tolist())

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Standardise transformed features with the pool statistics and clip them (float32)."""
        if not self.fitted:
            raise RuntimeError("FeatureSpec has no statistics: call fit() on a pool first")
        z = (np.asarray(raw, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        return np.clip(z, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "obs_fields": list(self.obs_fields),
            "tokens": [asdict(t) for t in self.tokens],
            "history_ticks": self.history_ticks,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(
            task=data["task"],
            obs_fields=list(data["obs_fields"]),
            tokens=[TokenSpec(**t) for t in data["tokens"]],
            history_ticks=int(data["history_ticks"]),
            mean=[float(v) for v in data["mean"]],
            std=[float(v) for v in data["std"]],
        )


def _prefixed(obs_fields: list[str], prefix: str) -> list[str]:
    return [n for n in obs_fields if n.startswith(prefix)]


def _abr_levels(obs_fields: list[str]) -> int:
    n_levels = len(_prefixed(obs_fields, "bitrates_bps."))
    if n_levels == 0:
        raise ValueError("ABR obs_fields have no 'bitrates_bps.*' entries")
    return n_levels


def _abr_tokens(obs_fields: list[str]) -> list[TokenSpec]:
    n_levels = _abr_levels(obs_fields)
    n_hist = len(_prefixed(obs_fields, "throughput_bps."))
    n_dl = len(_prefixed(obs_fields, "download_time_s."))
    return [
        TokenSpec("last_bitrate", "scalar", 1, "identity"),
        TokenSpec("buffer", "scalar", 1, "identity"),
        TokenSpec("throughput_history", "series", n_hist, "log1p"),
        TokenSpec("download_time_history", "series", n_dl, "log1p"),
        TokenSpec("next_chunk_bytes", "series", n_levels, "log1p"),
        TokenSpec("chunks_left", "scalar", 1, "identity"),
        TokenSpec("download_estimate", "series", n_levels, "log1p"),
    ]


def _abr_extract(spec: FeatureSpec, obs: np.ndarray) -> list[np.ndarray]:
    """Token values by the spec's token names, so checkpoints saved before a token was added still load."""
    fields = spec.obs_fields
    n_levels = _abr_levels(fields)
    bitrates = obs[:, spec._columns([f"bitrates_bps.{q}" for q in range(n_levels)])]
    last_q = np.clip(obs[:, spec._column("last_quality")].round().astype(int), 0, n_levels - 1)
    last_bitrate_mbps = bitrates[np.arange(len(obs)), last_q] / 1e6
    throughput = obs[:, spec._columns(_prefixed(fields, "throughput_bps."))]
    download = obs[:, spec._columns(_prefixed(fields, "download_time_s."))]
    next_bytes = obs[:, spec._columns([f"future_chunk_bytes.0.{q}" for q in range(n_levels)])]
    chunks_left = obs[:, spec._column("chunks_total")] - obs[:, spec._column("chunk_index")]
    by_name = {
        "last_bitrate": last_bitrate_mbps,
        "buffer": obs[:, spec._column("buffer_s")],
        "throughput_history": throughput,
        "download_time_history": download,
        "next_chunk_bytes": next_bytes,
        "chunks_left": chunks_left,
        "download_estimate": _download_estimate_s(throughput, next_bytes),
    }
    return [by_name[token.name] for token in spec.tokens]


#: Recent chunk throughputs the download estimate averages (RobustMPC's window).
ESTIMATE_WINDOW = 5


def _download_estimate_s(throughput_bps: np.ndarray, next_bytes: np.ndarray) -> np.ndarray:
    """Seconds the next chunk would take at each level at the harmonic mean of the last measured throughputs.

    The quantity every rate- and model-based ABR compares with the buffer, handed to the policy
    directly rather than left for it to rediscover from logarithms of rates and sizes; 0 before
    any chunk has been measured.
    """
    recent = throughput_bps[:, -ESTIMATE_WINDOW:]
    measured = recent > 0
    count = measured.sum(axis=1)
    inverse = np.where(measured, 1.0 / np.where(measured, recent, 1.0), 0.0).sum(axis=1)
    harmonic_bps = np.where(count > 0, count / np.where(inverse > 0, inverse, 1.0), 0.0)
    return np.where(harmonic_bps[:, None] > 0, next_bytes * 8.0 / np.maximum(harmonic_bps[:, None], 1.0), 0.0)


#: AQM scalar groups: token name -> (observation fields, transform).
_AQM_GROUPS: dict[str, tuple[list[str], str]] = {
    "delays": (["qdelay_s", "c_sojourn_s", "l_sojourn_s"], "log1p_ms"),
    "lengths": (["c_len_pkts", "l_len_pkts", "c_len_bytes", "l_len_bytes"], "log1p"),
    "rates": (["c_arrival_bps", "l_arrival_bps", "departure_bps"], "log1p"),
    "utilisation": (["utilisation", "interval_s"], "identity"),
    "signals": (["c_drops", "c_marks", "l_marks", "l_drops", "tail_drops"], "log1p"),
    "p_prime": (["p_prime"], "log10_prob"),
}
#: AQM series tokens: token name -> (observation field, transform), over the last history_ticks ticks.
_AQM_SERIES: dict[str, tuple[str, str]] = {
    "qdelay_history": ("qdelay_s", "log1p_ms"),
    "utilisation_history": ("utilisation", "identity"),
    "p_prime_history": ("p_prime", "log10_prob"),
}


def _aqm_tokens(history_ticks: int) -> list[TokenSpec]:
    tokens = [TokenSpec(name, "scalar", len(names), tf) for name, (names, tf) in _AQM_GROUPS.items()]
    tokens += [TokenSpec(name, "series", history_ticks, tf) for name, (_, tf) in _AQM_SERIES.items()]
    return tokens


def _aqm_extract(spec: FeatureSpec, obs: np.ndarray) -> list[np.ndarray]:
    parts = [obs[:, spec._columns(names)] for names, _ in _AQM_GROUPS.values()]
    h = spec.history_ticks
    for name, _ in _AQM_SERIES.values():
        padded = np.concatenate([np.zeros(h - 1), obs[:, spec._column(name)]])
        parts.append(np.lib.stride_tricks.sliding_window_view(padded, h))  # row t: ticks t-h+1 .. t, oldest first
    return parts


def feature_spec(task: str, obs_fields: list[str], history_ticks: int = AQM_HISTORY_TICKS) -> FeatureSpec:
    """The (unfitted) feature spec of a task for observations named by ``obs_fields``."""
    if task == "abr":
        spec = FeatureSpec("abr", list(obs_fields), _abr_tokens(list(obs_fields)), history_ticks=1)
    elif task == "aqm":
        if history_ticks < 1:
            raise ValueError(f"history_ticks must be >= 1, got {history_ticks}")
        spec = FeatureSpec("aqm", list(obs_fields), _aqm_tokens(history_ticks), history_ticks=history_ticks)
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    spec.raw_features(np.zeros((1, len(obs_fields))))  # fail now, naming the missing field, not at the first step
    return spec


#: Fixed reward scaling per task: ``scaled = max(reward, floor) / scale`` (see :class:`RewardScale`).
#: ABR: QoE_lin per chunk; 4.3 is the top rung in Mbps (a perfect chunk scores 1) and the floor of
#: -8.6 (two top-rung chunks, about 2 s of stall) clips long stalls, so one 25 s stall cannot set the
#: scale for the whole pool. AQM: the control point's reward per tick (utilisation minus delay and
#: drop penalties, at most 1); penalties below -4 are clipped.
REWARD_SCALING: dict[str, tuple[float, float]] = {"abr": (-8.6, 4.3), "aqm": (-4.0, 1.0)}


@dataclass(frozen=True)
class RewardScale:
    """Scales rewards by a fixed, documented constant per task, with stalls/penalties clipped at ``floor``.

    Min-max scaling over a pool let one outlier set the scale (90 % of scaled ABR rewards sat in
    0.96-0.99 and the returns of BBA, rate and MPC episodes differed in the third digit); a fixed
    scale keeps returns in the task's own units, so good and bad episodes stay apart.
    ``max_return`` is the largest scaled episode return of the training pool: returns-to-go are
    divided by it before they are embedded. ``target_return`` is where an episode starts at
    inference (the decision-transformer's "ask for this much"); None means ``max_return``.
    """

    floor: float
    scale: float
    max_return: float
    target_return: float | None = None

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"reward scale must be > 0, got {self.scale}")

    @classmethod
    def for_task(cls, task: str, max_return: float = 1.0, target_return: float | None = None) -> RewardScale:
        if task not in REWARD_SCALING:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        floor, scale = REWARD_SCALING[task]
        return cls(floor, scale, max_return, target_return)

    def scale_rewards(self, reward: np.ndarray | float) -> np.ndarray:
        """Rewards in scaled units: clipped at the floor, divided by the scale."""
        return np.maximum(np.asarray(reward, dtype=np.float64), self.floor) / self.scale

    def returns_to_go(self, rewards: np.ndarray) -> np.ndarray:
        """Scaled returns-to-go of one episode's rewards (gamma 1), as the model sees them."""
        scaled = self.scale_rewards(rewards)
        return np.cumsum(scaled[::-1])[::-1] / self.return_divisor

    @property
    def return_divisor(self) -> float:
        return abs(self.max_return) if abs(self.max_return) > 1e-9 else 1.0

    @property
    def start_return(self) -> float:
        """The scaled return an episode is started from at inference."""
        return self.max_return if self.target_return is None else self.target_return
