"""The Pensieve-style chunk-level ABR simulator, for cross-checking the packet-level runs.

A session walks one bandwidth trace ("fixed" evaluation: no noise, from the
trace's second line, start quality index 1):

- a chunk of S bytes is delivered at ``rate x dt x 0.95`` bytes per trace
  interval, line ``i`` of the trace giving the rate over ``(t[i-1], t[i]]``,
  and the trace wraps to its second line at its end;
- ``delay = download time + RTT`` (80 ms), ``rebuffer = max(delay - buffer, 0)``,
  ``buffer = max(buffer - delay, 0) + chunk duration``;
- above the 60 s buffer cap the client waits whole 0.5 s steps until the
  buffer is back under the cap (not after the last chunk); the trace runs on
  while it waits, but the RTT never consumes trace time.

The first chunk is fetched at the start quality without asking the policy,
as in Pensieve; the policy decides every later chunk from an
:class:`AbrObservation` built by :meth:`VideoManifest.abr_observation`, the same
builder the packet-level client uses. Times in the tables are session times:
0 at the first request, advancing by each chunk's delay and wait.

Run ``python -m testbed.chunksim --policy bba,rate,mpc,bola --traces DIR``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from agents.abr import BBA, AbrPolicy, BolaE, ClairvoyantMPC, LinkFuture, RateBased, RobustMPC
from agents.decisions import SCHEMA as DECISIONS_SCHEMA
from agents.decisions import DecisionLog
from agents.policy import observe_reward
from agents.protocol.control_points import ABR_HISTORY, ABR_HORIZON, AbrObservation
from agents.protocol.qoe import QoeSummary, qoe_lin_terms
from emulation.video import (
    BandwidthTrace,
    VideoManifest,
    default_manifest,
    default_traces,
    load_manifest,
    load_trace_set,
)
from emulation.video.session import VIDEO_COLUMNS, check_quality
from testbed.hindsight import HindsightDP

RTT_S = 0.08
BUFFER_CAP_S = 60.0
DRAIN_STEP_S = 0.5
PAYLOAD_FRACTION = 0.95  # share of the link rate that carries chunk bytes (headers take the rest)
START_QUALITY = 1
CONTROL_POINT = "abr-0"

#: Policies by the name the CLI and reports use.
POLICIES: dict[str, Callable[[], AbrPolicy]] = {"bba": BBA, "rate": RateBased, "mpc": RobustMPC, "bola": BolaE}
#: Teachers that see the future: only this simulator can drive them.
TEACHERS: dict[str, Callable[[], AbrPolicy]] = {
    "oracle": ClairvoyantMPC, "rollout": lambda: RolloutTeacher(), "hindsight": lambda: HindsightDP(),
} | {f"oracle-f{k}": (lambda k=k: ClairvoyantMPC(foresight=k)) for k in range(1, 5)}
#: RobustMPC as Pensieve's and NetLLM's code runs it (sizes of chunks k+1..k+5, ties to the last plan), for
#: comparing with their numbers.
PUBLISHED_MPC = "mpc-published"


def published_mpc(manifest: VideoManifest) -> Callable[[], AbrPolicy]:
    """The published RobustMPC variant, given the whole video (it plans with sizes beyond an observation's)."""
    return lambda: RobustMPC(published=True, chunk_bytes=manifest.chunk_bytes)



class _TraceCursor:
    """Pensieve's walk over a trace, line by line, wrapping to the second line at the end."""

    def __init__(self, trace: BandwidthTrace) -> None:
        if not np.any(trace.bandwidth_bps[1:] > 0):
            raise ValueError(f"trace {trace.name}: every rate after the first line is 0, no chunk would finish")
        self.times_s = trace.times_s
        self.bytes_per_s = trace.bandwidth_bps / 8.0
        self.index = 1
        self.last_time_s = float(self.times_s[0])

    @property
    def offset_s(self) -> float:
        """Where the walk is inside the trace's period, from its first line."""
        return self.last_time_s - float(self.times_s[0])

    def future(self, rtt_s: float, buffer_cap_s: float) -> LinkFuture:
        """The link from here on, as the cursor will deliver it (for policies that may see the future)."""
        return LinkFuture(self.times_s, self.bytes_per_s * PAYLOAD_FRACTION, self.offset_s, rtt_s, buffer_cap_s,
                          DRAIN_STEP_S)

    def _next_line(self) -> None:
        self.last_time_s = float(self.times_s[self.index])
        self.index += 1
        if self.index >= self.times_s.size:
            self.index = 1
            self.last_time_s = float(self.times_s[0])

    def download(self, size_bytes: float) -> float:
        """Deliver ``size_bytes``; return the transfer time in seconds."""
        sent_bytes = 0.0
        elapsed_s = 0.0
        while True:
            rate = self.bytes_per_s[self.index]
            interval_s = self.times_s[self.index] - self.last_time_s
            payload = rate * interval_s * PAYLOAD_FRACTION
            if sent_bytes + payload > size_bytes:
                fraction_s = (size_bytes - sent_bytes) / rate / PAYLOAD_FRACTION
                self.last_time_s += fraction_s
                return elapsed_s + fraction_s
            sent_bytes += payload
            elapsed_s += interval_s
            self._next_line()

    def idle(self, wait_s: float) -> None:
        """Let ``wait_s`` of trace time pass without a transfer."""
        while True:
            interval_s = self.times_s[self.index] - self.last_time_s
            if interval_s > wait_s:
                self.last_time_s += wait_s
                return
            wait_s -= interval_s
            self._next_line()


@dataclass
class SessionResult:
    """One session: ``video`` has the video.parquet columns, ``decisions`` the decisions.parquet ones."""

    video: pd.DataFrame
    decisions: pd.DataFrame


class Playback:
    """One session's state, advanced a chunk at a time by :meth:`play`; :meth:`clone` forks it (rollouts).

    The first chunk is fetched at the start quality; ``observation()`` is what a policy sees
    before choosing each later one. Times are session times: 0 at the first request.
    """

    def __init__(self, trace: BandwidthTrace, manifest: VideoManifest, rtt_s: float = RTT_S,
                 buffer_cap_s: float = BUFFER_CAP_S, start_quality: int = START_QUALITY, start_s: float = 0.0):
        if not 0 <= start_quality < manifest.n_levels:
            raise ValueError(f"start_quality must be in [0, {manifest.n_levels - 1}], got {start_quality}")
        if rtt_s < 0 or buffer_cap_s < manifest.chunk_duration_s:
            raise ValueError(f"need rtt_s >= 0 and buffer_cap_s >= one chunk, got {rtt_s}, {buffer_cap_s}")
        if start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {start_s}")
        self.trace, self.manifest = trace, manifest
        self.rtt_s, self.buffer_cap_s = rtt_s, buffer_cap_s
        self.cursor = _TraceCursor(trace)
        self.cursor.idle(start_s)
        self.chunk = 0
        self.clock_s = 0.0
        self.buffer_s = 0.0
        self.wait_s = 0.0
        self.last_quality = start_quality
        self.last_rebuffer_s = 0.0
        self.throughputs_bps: list[float] = []
        self.download_times_s: list[float] = []

    @property
    def done(self) -> bool:
        return self.chunk >= self.manifest.n_chunks

    def clone(self) -> Playback:
        twin = copy.copy(self)
        twin.cursor = copy.copy(self.cursor)
        twin.throughputs_bps = list(self.throughputs_bps)
        twin.download_times_s = list(self.download_times_s)
        return twin

    def observation(self) -> AbrObservation:
        return self.manifest.abr_observation(self.chunk, self.last_quality, self.buffer_s, self.last_rebuffer_s,
                                             self.throughputs_bps, self.download_times_s)

    def play(self, quality: int) -> dict:
        """Fetch the next chunk at ``quality``; its video.parquet row (without ``client``)."""
        manifest, chunk = self.manifest, self.chunk
        size_bytes = int(manifest.chunk_bytes[quality, chunk])
        delay_s = self.cursor.download(size_bytes) + self.rtt_s
        rebuffer_s = max(delay_s - self.buffer_s, 0.0)
        buffer_before_s = self.buffer_s
        self.buffer_s = max(self.buffer_s - delay_s, 0.0) + manifest.chunk_duration_s
        terms = qoe_lin_terms(
            [manifest.bitrates_bps[quality]], [rebuffer_s], prev_bitrate_bps=manifest.bitrates_bps[self.last_quality]
        )
        row = {
            "chunk": chunk,
            "quality": quality,
            "bitrate_bps": float(manifest.bitrates_bps[quality]),
            "chunk_bytes": size_bytes,
            "request_s": self.clock_s,
            "first_byte_s": self.clock_s + self.rtt_s,
            "last_byte_s": self.clock_s + delay_s,
            "download_s": delay_s,
            "throughput_bps": size_bytes * 8.0 / delay_s,
            "buffer_before_s": buffer_before_s,
            "buffer_after_s": self.buffer_s,
            "rebuffer_s": rebuffer_s,
            "wait_s": self.wait_s,
            "qoe_bitrate_mbps": float(terms.bitrate[0]),
            "qoe_rebuffer_penalty": float(terms.rebuffer_penalty[0]),
            "qoe_smoothness_penalty": float(terms.smoothness_penalty[0]),
            "qoe_lin": float(terms.total[0]),
        }
        self.clock_s += delay_s
        self.throughputs_bps.append(size_bytes * 8.0 / delay_s)
        self.download_times_s.append(delay_s)
        self.last_quality = quality
        self.last_rebuffer_s = rebuffer_s
        self.chunk += 1
        self.wait_s = 0.0
        if self.buffer_s > self.buffer_cap_s and not self.done:
            self.wait_s = math.ceil((self.buffer_s - self.buffer_cap_s) / DRAIN_STEP_S) * DRAIN_STEP_S
            self.buffer_s -= self.wait_s
            self.cursor.idle(self.wait_s)
            self.clock_s += self.wait_s
        return row


class RolloutTeacher:
    """One step of policy improvement over a base policy, with the future known: the teacher of DAgger rounds.

    Before each decision the simulator hands it the live session (``see_playback``). For every
    quality it forks the session, plays that quality, then lets a copy of the base policy
    (RobustMPC by default) choose the next ``horizon - 1`` chunks on the true link, and scores the
    action by the QoE_lin collected. It acts on the best score; the scores of all actions are
    what a learner regresses (``last_action_scores``). A learner fitting their expectation given
    what it sees improves on the base policy the way one policy-iteration step does, and the
    continuation by a policy that cannot see the future prices the risk of a bold action, which
    a clairvoyant continuation (:class:`agents.abr.ClairvoyantMPC`) hides.
    """

    control = "abr"

    def __init__(self, base: Callable[[], AbrPolicy] = RobustMPC, horizon: int = 8, name: str = "rollout") -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.name = name
        self.horizon = horizon
        self.base = base()
        self._playback: Playback | None = None
        self.last_action_scores: np.ndarray | None = None

    def reset(self) -> None:
        self.base.reset()
        self._playback = None
        self.last_action_scores = None

    def see_playback(self, playback: Playback) -> None:
        self._playback = playback

    def observe_reward(self, reward: float) -> None:
        observe_reward(self.base, reward)

    def action_scores(self, obs: AbrObservation) -> np.ndarray:
        if self._playback is None:
            raise RuntimeError("a rollout teacher acts only where the simulator shows it the session (see_playback)")
        self.base.act(obs)  # keep the base policy's own state (MPC's error history) current
        scores = np.zeros(obs.n_levels)
        for quality in range(obs.n_levels):
            fork, base = self._playback.clone(), copy.deepcopy(self.base)
            total = fork.play(quality)["qoe_lin"]
            for _ in range(self.horizon - 1):
                if fork.done:
                    break
                step = fork.play(base.act(fork.observation()))
                observe_reward(base, step["qoe_lin"])
                total += step["qoe_lin"]
            scores[quality] = total
        return scores

    def act(self, obs: AbrObservation) -> int:
        self.last_action_scores = self.action_scores(obs)
        return int(np.argmax(self.last_action_scores))


def run_session(
    policy: AbrPolicy,
    trace: BandwidthTrace,
    manifest: VideoManifest,
    rtt_s: float = RTT_S,
    buffer_cap_s: float = BUFFER_CAP_S,
    start_quality: int = START_QUALITY,
    client: str = "chunksim",
    shadows: Sequence[AbrPolicy] = (),
    start_s: float = 0.0,
) -> SessionResult:
    """Play the whole video over ``trace`` with ``policy`` choosing every chunk after the first.

    ``decisions`` holds one row per policy decision plus a final ``done`` row
    that carries the last chunk's reward; nothing is chosen there, so its
    action is ``[nan]`` (readers take actions from all rows but the last).
    Each of ``shadows`` sees every observation too and its would-be choice is
    logged beside the acting one (``role == "shadow"``): the DAgger relabelling
    of the states the acting policy visits. Teachers are shown what they may
    see before each decision: the true link (``see_future``) or the session
    itself, to fork rollouts from (``see_playback``).
    ``start_s`` starts the session that far into the trace (Pensieve's training
    sessions start at random points; evaluation starts at 0).
    """
    playback = Playback(trace, manifest, rtt_s, buffer_cap_s, start_quality, start_s)
    deciders = [("acting", policy), *(("shadow", shadow) for shadow in shadows)]
    for _, p in deciders:
        p.reset()
    cursor = playback.cursor
    future = cursor.future(rtt_s, buffer_cap_s) if any(hasattr(p, "see_future") for _, p in deciders) else None
    reward = 0.0
    video_rows: list[dict] = []
    decision_rows: list[dict] = []

    while not playback.done:
        chunk = playback.chunk
        quality = start_quality
        if chunk > 0:
            obs = playback.observation()
            if future is not None:
                future.now_s = cursor.offset_s
            for role, p in deciders:
                if future is not None and hasattr(p, "see_future"):
                    p.see_future(future)
                if hasattr(p, "see_playback"):
                    p.see_playback(playback)
                started = time.perf_counter()
                choice = p.act(obs)
                decision_ms = (time.perf_counter() - started) * 1e3
                choice = check_quality(f"policy {p.name}", choice, manifest.n_levels, chunk)
                if role == "acting":
                    quality = choice
                decision_rows.append(_decision_row(p, chunk - 1, playback.clock_s, obs, [choice], reward,
                                                   decision_ms, False, trace, chunk, role))
        row = playback.play(quality)
        reward = row["qoe_lin"]
        video_rows.append({"client": client, **row})
        for _, p in deciders:
            observe_reward(p, reward)
    final_obs = playback.observation()
    decision_rows.append(
        _decision_row(
            policy, manifest.n_chunks - 1, playback.clock_s, final_obs, [math.nan], reward, 0.0, True, trace, manifest.n_chunks
        )
    )
    video = pd.DataFrame(video_rows, columns=VIDEO_COLUMNS)
    return SessionResult(video, pd.DataFrame(decision_rows, columns=DECISIONS_SCHEMA.names))


def _info(policy: AbrPolicy, trace: BandwidthTrace, chunk: int, done: bool) -> dict:
    """The row's info: where it came from, and a teacher's value of every action when it has them."""
    info = {"trace": trace.name, "chunk": chunk, "simulator": "chunksim"}
    scores = getattr(policy, "last_action_scores", None)
    if scores is not None and not done:
        info["action_scores"] = [float(v) for v in scores]
    return info


def _decision_row(
    policy: AbrPolicy,
    step: int,
    sim_time_s: float,
    obs: AbrObservation,
    action: list[float],
    reward: float,
    decision_ms: float,
    done: bool,
    trace: BandwidthTrace,
    chunk: int,
    role: str = "acting",
) -> dict:
    return {
        "control_point": CONTROL_POINT,
        "step": step,
        "sim_time_s": sim_time_s,
        "policy": policy.name,
        "role": role,
        "obs": obs.to_vector().tolist(),
        "action": [float(a) for a in action],
        "reward": reward,
        "decision_ms": decision_ms,
        "fallback": False,
        "done": done,
        "info": json.dumps(_info(policy, trace, chunk, done)),
    }


def simulate_session(
    policy: AbrPolicy,
    trace: BandwidthTrace,
    manifest: VideoManifest,
    rtt_s: float = RTT_S,
    buffer_cap_s: float = BUFFER_CAP_S,
    start_quality: int = START_QUALITY,
    client: str = "chunksim",
) -> pd.DataFrame:
    """One session's video.parquet rows (see :func:`run_session`)."""
    return run_session(policy, trace, manifest, rtt_s, buffer_cap_s, start_quality, client).video


def write_decisions(df_or_steps: pd.DataFrame | Sequence[Mapping], path: str | Path, policy_name: str) -> Path:
    """Write one control point's decision rows as a decisions.parquet (docs/run-directory.md).

    Takes a ``SessionResult.decisions`` frame, several concatenated, or a list
    of row dicts with the same columns; ``obs_fields`` is derived from the
    observation length, so every row must come from the same ladder.
    """
    frame = df_or_steps if isinstance(df_or_steps, pd.DataFrame) else pd.DataFrame(list(df_or_steps))
    missing = [c for c in DECISIONS_SCHEMA.names if c not in frame.columns]
    if missing:
        raise ValueError(f"decision rows lack columns {missing}")
    if frame.empty:
        raise ValueError("no decision rows to write")
    control_points = frame["control_point"].unique()
    obs_sizes = {len(o) for o in frame["obs"]}
    if len(control_points) != 1 or len(obs_sizes) != 1:
        raise ValueError(
            f"one file holds one control point with one observation layout, got control points "
            f"{list(control_points)} and observation lengths {sorted(obs_sizes)}"
        )
    n_levels = (obs_sizes.pop() - len(AbrObservation.SCALARS) - 2 * ABR_HISTORY) // (1 + ABR_HORIZON)
    obs_fields = AbrObservation.field_names(n_levels)
    with DecisionLog(path, str(control_points[0]), "abr", obs_fields, policy_name) as log:
        for row in frame.itertuples(index=False):
            log.append(
                step=row.step,
                sim_time_s=row.sim_time_s,
                policy=row.policy,
                role=row.role,
                obs=row.obs,
                action=row.action,
                reward=row.reward,
                decision_ms=row.decision_ms,
                fallback=row.fallback,
                done=row.done,
                info=row.info,
            )
    return Path(path)


def evaluate(
    policies: Mapping[str, Callable[[], AbrPolicy]],
    traces: Sequence[BandwidthTrace],
    manifest: VideoManifest,
    out_dir: str | Path | None = None,
    decisions: bool = False,
    shadows: Mapping[str, Callable[[], AbrPolicy]] | None = None,
) -> pd.DataFrame:
    """Run every policy over every trace; one row per (policy, trace).

    ``qoe_lin`` is the session mean excluding the first chunk (the headline
    number of the literature). With ``out_dir``, each policy's sessions land in
    ``out_dir/<policy>/video.parquet`` (``client`` = trace name) and, with
    ``decisions``, ``decisions.parquet`` (with the rows of ``shadows``, which
    shadow every policy: DAgger's relabelling).
    """
    rows = []
    for key, factory in policies.items():
        policy = factory()
        shadow_policies = [make() for make in (shadows or {}).values()]
        videos, decision_frames = [], []
        for trace in traces:
            result = run_session(policy, trace, manifest, client=trace.name, shadows=shadow_policies)
            summary = QoeSummary.from_chunks(
                result.video["bitrate_bps"],
                result.video["rebuffer_s"],
                manifest.chunk_duration_s,
                prev_bitrate_bps=manifest.bitrates_bps[START_QUALITY],
            )
            acting = result.decisions["role"] == "acting"
            acted = result.decisions.loc[acting & ~result.decisions["done"], "decision_ms"]
            rows.append(
                {
                    "policy": key,
                    "trace": trace.name,
                    "qoe_lin": summary.qoe_lin_mean_after_first,
                    "qoe_lin_all": summary.qoe_lin_mean,
                    "avg_bitrate_bps": summary.avg_bitrate_bps,
                    "rebuffer_s": summary.rebuffer_s,
                    "rebuffer_ratio": summary.rebuffer_ratio,
                    "rebuffer_count": summary.rebuffer_count,
                    "switches": summary.switches,
                    "startup_delay_s": summary.startup_delay_s,
                    "decision_ms_p50": float(np.median(acted)),
                }
            )
            videos.append(result.video)
            decision_frames.append(result.decisions)
        if out_dir is not None:
            policy_dir = Path(out_dir) / key
            policy_dir.mkdir(parents=True, exist_ok=True)
            pd.concat(videos, ignore_index=True).to_parquet(policy_dir / "video.parquet", index=False)
            if decisions:
                write_decisions(pd.concat(decision_frames, ignore_index=True), policy_dir / "decisions.parquet", key)
    return pd.DataFrame(rows)


def summarize(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per-policy means over traces, best QoE first."""
    table = evaluation.groupby("policy").agg(
        traces=("trace", "count"),
        qoe_lin=("qoe_lin", "mean"),
        avg_bitrate_mbps=("avg_bitrate_bps", lambda b: b.mean() / 1e6),
        rebuffer_s=("rebuffer_s", "mean"),
        switches=("switches", "mean"),
        decision_ms_p50=("decision_ms_p50", "median"),
    )
    return table.sort_values("qoe_lin", ascending=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.chunksim", description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="bba,rate,mpc,bola",
                        help=f"comma-separated, from {sorted(POLICIES)}, {PUBLISHED_MPC} (RobustMPC with the "
                        "published off-by-one: chunk sizes k+1..k+5) or any ABR policy of agents.registry (llm)")
    parser.add_argument("--traces", type=Path, help="trace file or directory (default: the shipped FCC traces)")
    parser.add_argument("--limit", type=int, help="use only the first N traces (sorted by name)")
    parser.add_argument("--manifest", type=Path, help="video_size_* directory (default: the shipped video1)")
    parser.add_argument("--out", type=Path, help="write <out>/<policy>/video.parquet and <out>/evaluation.parquet")
    parser.add_argument("--decisions", action="store_true", help="also write <out>/<policy>/decisions.parquet")
    args = parser.parse_args(argv)

    from agents.registry import make_policy, policy_names

    names = [n.strip() for n in args.policy.split(",") if n.strip()]
    known = set(POLICIES) | {PUBLISHED_MPC} | set(policy_names("abr"))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"unknown policy {unknown}; choose from {sorted(known)}")
    if args.decisions and args.out is None:
        parser.error("--decisions needs --out")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    traces = load_trace_set(args.traces, args.limit) if args.traces else default_traces()[: args.limit]
    manifest = load_manifest(args.manifest) if args.manifest else default_manifest()
    factories = {n: published_mpc(manifest) if n == PUBLISHED_MPC else POLICIES.get(n)
                 or (lambda n=n: make_policy("abr", n)) for n in names}

    evaluation = evaluate(factories, traces, manifest, args.out, args.decisions)
    if args.out is not None:
        evaluation.to_parquet(args.out / "evaluation.parquet", index=False)
    print(summarize(evaluation).to_string(float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
