"""Learning an ABR policy end to end from a recipe: teachers, pools, adaptation, DAgger, closed-loop selection.

``testbed learn RECIPE.yaml --out DIR`` (or ``python -m llm adapt --recipe RECIPE.yaml``):

1. **Experience.** Every teacher of the recipe (the clairvoyant planner ``oracle``, and any
   classic ABR) plays every training trace in the chunk-level simulator: the shared ``train``
   set plus seeded synthetic traces. Validation traces never enter a pool.
2. **Pool and adaptation.** The teachers' decisions become one pool; the model (a decision
   transformer on a tiny or pretrained backbone, or the MLP baseline) trains on it.
3. **Closed-loop selection.** Every ``eval_every`` steps the policy plays the ``select`` half
   of ``valid-fcc`` and ``valid-norway`` in the chunk-level simulator; its score is the mean
   over the two sets of QoE relative to RobustMPC's on the same traces. The best checkpoint is
   kept. The ``report`` halves are never used here: results are read on them.
4. **DAgger.** Each round the current policy acts on the training traces while the teacher
   shadows it; the teacher's would-be actions on the states the policy really visited join
   the pool, and the policy trains again (from its last weights or from scratch).

The output directory holds ``checkpoint/`` (the selected policy, ready for ``--abr llm``),
``recipe.yaml`` (as run), ``learn.json`` (the trail: data, rounds, selection history, wall
time) and the intermediate experience and pools.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emulation.video import BandwidthTrace, default_manifest, load_trace_set, synthetic_trace
from emulation.video.traces import split_half
from testbed.chunksim import POLICIES, TEACHERS, evaluate, run_session, write_decisions

#: The validation sets selection reads (their ``select`` halves) and results are reported on (``report``).
VALIDATION_SETS = ("valid-fcc", "valid-norway")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticTraces(_Strict):
    """Seeded synthetic traces that widen the training distribution (levels held for random durations)."""

    count: int = Field(0, ge=0)
    seed: int = 0
    duration_s: float = Field(320.0, gt=0)
    min_mbps: float = Field(0.2, ge=0)
    max_mbps: float = Field(6.0, gt=0)
    min_hold_s: float = Field(1.0, gt=0)
    max_hold_s: float = Field(20.0, gt=0)


class ModelSpec(_Strict):
    kind: Literal["dt", "mlp"] = "dt"
    #: 'tiny' (random, built into the checkpoint), 'default' (SmolLM2-135M) or a local model directory
    backbone: str = "tiny"


class DaggerSpec(_Strict):
    rounds: int = Field(0, ge=0)
    teacher: str = "oracle"
    #: retrain from scratch on the grown pool (True) or continue from the last weights (False)
    from_scratch: bool = False
    #: training settings that differ in DAgger rounds (e.g. a shorter run when continuing)
    training: dict = Field(default_factory=dict)


class Recipe(_Strict):
    """Everything that makes a shipped policy, as a YAML file beside it."""

    name: str
    task: Literal["abr"] = "abr"
    model: ModelSpec = Field(default_factory=ModelSpec)
    #: shared trace sets or directories to learn from (never a validation set)
    traces: list[str] = Field(default_factory=lambda: ["train"])
    synthetic: SyntheticTraces = Field(default_factory=SyntheticTraces)
    #: sessions per training trace: from its start, then from seeded random offsets
    starts_per_trace: int = Field(1, ge=1)
    #: seeds the sessions' start offsets (each round's) and the model's initialisation, batches and held-out
    #: episodes (``training.seed`` overrides the latter)
    seed: int = 0
    teachers: list[str] = Field(default_factory=lambda: ["oracle"])
    dagger: DaggerSpec = Field(default_factory=DaggerSpec)
    #: llm.train.TrainSettings fields (dt) or llm.mlp.MlpSettings fields (mlp)
    training: dict = Field(default_factory=dict)
    #: trace sets selection plays (their ``select`` halves) and results are read on; never in a pool
    validation: list[str] = Field(default_factory=lambda: list(VALIDATION_SETS))
    #: start from this checkpoint (a lever added to a trained policy: exit heads, gates, a distilled group)
    init: str | None = None
    #: train on this existing pool (e.g. the one a base model was trained on) instead of collecting experience
    pool: str | None = None
    #: torch threads (the machine's cores are shared with the simulator)
    threads: int = Field(2, ge=1)
    #: processes that play experience and DAgger sessions in parallel
    workers: int = Field(2, ge=1)
    #: the shipped policy acts behind a stall guard of this margin (s; agents.abr.guard); selection and DAgger
    #: play the bare model
    stall_guard_s: float | None = Field(None, ge=0)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the recipe: {exc}") from exc
        try:
            recipe = cls.model_validate(data)
        except ValidationError as exc:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{path}: {where}") from None
        recipe.check()
        return recipe

    def check(self) -> None:
        leaked = [t for t in self.traces if Path(t).name in {*VALIDATION_SETS, *self.validation}]
        if leaked:
            raise ValueError(f"recipe {self.name}: validation sets never enter a pool, found {leaked} in traces")
        known = set(TEACHERS) | set(POLICIES)
        unknown = [t for t in [*self.teachers, self.dagger.teacher] if t not in known]
        if unknown:
            raise ValueError(f"recipe {self.name}: unknown teacher(s) {unknown}; known: {sorted(known)}")
        if not self.teachers:
            raise ValueError(f"recipe {self.name}: needs at least one teacher")


def training_traces(recipe: Recipe) -> list[BandwidthTrace]:
    """The recipe's training traces: the named sets, then its synthetic traces."""
    traces = [t for name in recipe.traces for t in load_trace_set(name)]
    s = recipe.synthetic
    traces += [synthetic_trace(s.seed + i, s.duration_s, s.min_mbps, s.max_mbps, s.min_hold_s, s.max_hold_s)
               for i in range(s.count)]
    return traces


def validation_traces(part: str, sets: list[str] | tuple[str, ...] = VALIDATION_SETS) -> dict[str, list[BandwidthTrace]]:
    """One half (``select`` or ``report``), or ``all``, of each validation set."""
    return {name: split_half(load_trace_set(name), part) for name in sets}


def _teacher(name: str) -> Callable:
    return TEACHERS.get(name) or POLICIES[name]


def learned_policy(model: torch.nn.Module, config, stall_guard_s: float | str | None = None) -> Callable:
    """A factory of agent policies around an in-memory model (decision transformer or MLP); the stall guard
    is the config's unless ``stall_guard_s`` says otherwise."""
    from agents.llm_agent import LlmPolicy
    from llm.inference import LlmDecider
    from llm.mlp import MlpDecider, MlpPolicy

    def make():
        decider = MlpDecider(model, config) if isinstance(model, MlpPolicy) else LlmDecider(model, config)
        return LlmPolicy("abr", decider=decider, stall_guard_s=stall_guard_s)

    return make


class ClosedLoopSelector:
    """Scores a policy by chunk-level QoE on the ``select`` halves, relative to RobustMPC on the same traces."""

    def __init__(self, sets: list[str] | tuple[str, ...] = VALIDATION_SETS, log: Callable[[str], None] = print) -> None:
        self.sets = validation_traces("select", sets)
        self.manifest = default_manifest()
        self.baseline = {name: float(evaluate({"mpc": POLICIES["mpc"]}, traces, self.manifest)["qoe_lin"].mean())
                         for name, traces in self.sets.items()}
        self.log = log

    def __call__(self, model: torch.nn.Module, config) -> dict:
        metrics: dict[str, float] = {}
        ratios = []
        for name, traces in self.sets.items():
            table = evaluate({"learned": learned_policy(model, config)}, traces, self.manifest)
            qoe = float(table["qoe_lin"].mean())
            metrics[f"{name}_qoe"] = qoe
            metrics[f"{name}_rebuffer_s"] = float(table["rebuffer_s"].mean())
            ratios.append(qoe / self.baseline[name])
        metrics["score"] = float(np.mean(ratios))
        return metrics


def sessions(recipe: Recipe, traces: list[BandwidthTrace], round_: int) -> list[tuple[BandwidthTrace, float]]:
    """(trace, start offset) of every training session: the trace's start, then seeded random offsets
    (``starts_per_trace`` in all), drawn afresh for each DAgger round."""
    rng = np.random.default_rng([recipe.seed, round_])
    out = []
    for trace in traces:
        offsets = [0.0, *rng.uniform(0.0, trace.duration_s, recipe.starts_per_trace - 1).tolist()]
        out += [(trace, float(o)) for o in offsets]
    return out


def _play(factory: Callable, shadows: list[Callable], plays: list[tuple[BandwidthTrace, float]],
          label: str = "") -> pd.DataFrame:
    manifest = default_manifest()
    policy = factory()
    shadow_policies = [make() for make in shadows]
    frames, t0 = [], time.perf_counter()
    for i, (trace, start) in enumerate(plays, 1):
        frames.append(run_session(policy, trace, manifest, client=trace.name, shadows=shadow_policies,
                                  start_s=start).decisions)
        if i % 50 == 0 or i == len(plays):
            print(f"  {label}{i}/{len(plays)} sessions, {time.perf_counter() - t0:.0f} s", flush=True)
    return pd.concat(frames, ignore_index=True)


#: (factory, shadow makers, plays, workers) of the collection being forked: workers inherit it (closures and
#: in-memory models do not pickle)
_FORKED_JOB: tuple | None = None


def _default_termination() -> None:
    """A forked worker dies quietly on SIGTERM: the pool ends its workers that way, and the parent's
    handler (raise Interrupted) would print a traceback from a worker still running its exit hooks."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _play_share(share: int) -> pd.DataFrame:
    torch.set_num_threads(1)  # one worker per core
    factory, shadows, plays, workers = _FORKED_JOB
    return _play(factory, shadows, plays[share::workers], f"worker {share}: ")


def collect(policies: dict[str, Callable], plays: list[tuple[BandwidthTrace, float]], out: Path,
            shadows: dict[str, Callable] | None = None, workers: int = 1) -> list[Path]:
    """Play every (trace, start) with each policy (and shadows) in the chunk-level simulator; the decisions files.

    ``workers`` > 1 forks that many processes, each playing an interleaved share of the sessions
    (the policies, an in-memory learner included, are inherited by the fork).
    """
    files = []
    shadow_makers = list((shadows or {}).values())
    for key, factory in policies.items():
        if workers > 1 and len(plays) > 1:
            global _FORKED_JOB
            _FORKED_JOB = (factory, shadow_makers, plays, workers)
            try:
                with multiprocessing.get_context("fork").Pool(workers, initializer=_default_termination) as pool:
                    frame = pd.concat(pool.map(_play_share, range(workers)), ignore_index=True)
            finally:
                _FORKED_JOB = None
        else:
            frame = _play(factory, shadow_makers, plays)
        frames = [frame]
        path = out / key / "decisions.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_decisions(pd.concat(frames, ignore_index=True), path, key)
        files.append(path)
    return files


def _train(recipe: Recipe, pool: Path, out: Path, selector: ClosedLoopSelector, log: Callable[[str], None],
           init: Path | None, overrides: dict) -> dict:
    settings = {"seed": recipe.seed, **recipe.training, **overrides}
    if recipe.model.kind == "mlp":
        from llm.mlp import MlpSettings, train_mlp

        return train_mlp(pool, out, MlpSettings(**settings), selector=selector, log=log)
    from llm.train import TrainSettings, adapt

    train_settings = TrainSettings.from_dict({**settings, "select_on": "closed_loop"})
    return adapt(pool, out, backbone=recipe.model.backbone, settings=train_settings, log=log, selector=selector,
                 init_checkpoint=init)


def _load_learned(checkpoint: Path, kind: str):
    if kind == "mlp":
        from llm.mlp import load_mlp

        return load_mlp(checkpoint)
    from llm.train import load_policy

    return load_policy(checkpoint)


def learn(recipe: Recipe, out_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Run the whole recipe into ``out_dir``; returns the trail written to ``learn.json``."""
    from llm.pool import build_pool

    torch.set_num_threads(recipe.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    t0 = time.perf_counter()
    traces = training_traces(recipe)
    files: list[Path] = []
    if recipe.pool is None:
        log(f"[{recipe.name}] {len(traces)} training traces x {recipe.starts_per_trace} starts; "
            f"teachers {recipe.teachers}")
        files = collect({t: _teacher(t) for t in recipe.teachers}, sessions(recipe, traces, 0), out / "experience",
                        workers=recipe.workers)
        log(f"[{recipe.name}] experience: {time.perf_counter() - t0:.0f} s")
    selector = ClosedLoopSelector(recipe.validation, log)
    log(f"[{recipe.name}] selection: RobustMPC on the select halves {selector.baseline}")
    trail: dict = {"recipe": recipe.name, "training_traces": len(traces), "rounds": []}
    checkpoint: Path | None = None
    for round_ in range(recipe.dagger.rounds + 1):
        if round_ > 0:  # DAgger: the learner acts, the teacher shadows; its labels on the learner's states join
            model, config = _load_learned(checkpoint, recipe.model.kind)
            dagger_dir = out / f"dagger-{round_}"
            files_round = collect({"learned": learned_policy(model, config)}, sessions(recipe, traces, round_), dagger_dir,
                                  shadows={recipe.dagger.teacher: _teacher(recipe.dagger.teacher)},
                                  workers=recipe.workers)
            trail.setdefault("dagger_files", []).extend(str(f) for f in files_round)
        dagger_files = [Path(f) for f in trail.get("dagger_files", [])]
        pool_dir = out / f"pool-{round_}"
        if recipe.pool is not None and round_ == 0:
            pool_dir = Path(recipe.pool)
        else:
            sources = [(f, ("acting", "shadow") if recipe.pool else ("acting",)) for f in files]
            if recipe.pool is not None:  # the given pool's own decision files, then the relabels
                sources = _pool_sources(Path(recipe.pool))
            build_pool([*sources, *((f, ("shadow",)) for f in dagger_files)], pool_dir, "abr")
        round_dir = out / f"round-{round_}"
        init = Path(recipe.init) if (round_ == 0 and recipe.init) else None
        if round_ > 0 and not recipe.dagger.from_scratch:
            init = checkpoint
        overrides = recipe.dagger.training if round_ > 0 else {}
        summary = _train(recipe, pool_dir, round_dir, selector, log, init, overrides)
        best = summary["best_validation"]
        trail["rounds"].append({"round": round_, "pool": str(pool_dir), "dagger_files": len(dagger_files),
                                "best_validation": best, "steps": summary["optimizer_steps"],
                                "wall_s": summary["wall_s"]})
        log(f"[{recipe.name}] round {round_}: best {best}")
        checkpoint = round_dir
    # the policy shipped is the best round's selected checkpoint
    best_round = max(trail["rounds"], key=lambda r: r["best_validation"]["score"])
    final = out / "checkpoint"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out / f"round-{best_round['round']}", final)
    if recipe.stall_guard_s is not None:
        _set_stall_guard(final, recipe.stall_guard_s)
    trail["selected_round"] = best_round["round"]
    trail["wall_s"] = time.perf_counter() - t0
    trail["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trail["evaluation"] = evaluate_checkpoint(final, recipe.model.kind, recipe.validation)
    (out / "learn.json").write_text(json.dumps(trail, indent=2, default=float))
    write_model_card(final, recipe, trail)
    log(f"[{recipe.name}] done in {trail['wall_s']:.0f} s: round {best_round['round']} selected, "
        f"checkpoint {final}")
    return trail



def _pool_sources(pool_dir: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """The decisions files a pool was built from, each with the roles read from it (its manifest keeps both:
    a DAgger file contributes only its shadow rows, the labels, never the learner's own actions)."""
    manifest = json.loads((pool_dir / "manifest.json").read_text())
    if "source_roles" not in manifest:
        raise ValueError(f"{pool_dir}: the pool does not record which roles it read from each file; rebuild it "
                         "to grow it with DAgger rounds")
    return [(Path(p), tuple(r)) for p, r in zip(manifest["sources"], manifest["source_roles"], strict=True)]


def _set_stall_guard(checkpoint: Path, margin_s: float) -> None:
    """Record in the checkpoint's config that its agent acts behind a stall guard."""
    path = checkpoint / "policy_config.json"
    config = json.loads(path.read_text())
    config["stall_guard_s"] = float(margin_s)
    path.write_text(json.dumps(config, indent=2))


def evaluate_checkpoint(checkpoint: Path, kind: str, sets: list[str] | tuple[str, ...] = VALIDATION_SETS) -> dict:
    """QoE of a checkpoint (as its agent acts, and without its stall guard if it has one) and of RobustMPC
    on each validation set, every trace and the report half."""
    model, config = _load_learned(checkpoint, kind)
    manifest = default_manifest()
    policies = {"learned": learned_policy(model, config), "mpc": POLICIES["mpc"]}
    if getattr(config, "stall_guard_s", None) is not None:
        policies["unguarded"] = learned_policy(model, config, stall_guard_s="none")
    out: dict = {}
    for name in sets:
        traces = load_trace_set(name)
        table = evaluate(policies, traces, manifest)
        report = {t.name for t in split_half(traces, "report")}
        for part, rows in (("all", table), ("report", table[table["trace"].isin(report)])):
            by = rows.groupby("policy")
            out[f"{Path(name).name}::{part}"] = {
                "qoe": by["qoe_lin"].mean().to_dict(), "rebuffer_s": by["rebuffer_s"].mean().to_dict(),
                "bitrate_mbps": (by["avg_bitrate_bps"].mean() / 1e6).to_dict(),
                "switches": by["switches"].mean().to_dict(),
            }
        out[f"{Path(name).name}::decision_ms_p50"] = float(table[table["policy"] == "learned"]["decision_ms_p50"].median())
    return out


_LICENCES = {
    "default": "SmolLM2-135M-Instruct (Hugging Face TB), Apache-2.0; the adapter and heads here: MIT",
    "tiny": "a randomly initialised tiny Llama built from a config (no pretrained weights); MIT",
}


def _licence(model: ModelSpec) -> str:
    if model.kind == "mlp":
        return "an MLP trained from scratch (no pretrained weights); MIT"
    return _LICENCES.get(model.backbone, "see the backbone's own licence")


def write_model_card(checkpoint: Path, recipe: Recipe, trail: dict) -> Path:
    """README.md beside the weights: what it is, the data and recipe, validation results, cost, licence."""
    config = json.loads((checkpoint / "policy_config.json").read_text())
    size_kib = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()) / 1024
    ev = trail["evaluation"]
    lines = [f"# {recipe.name}", "",
             f"An ABR policy for the testbed's video clients: a {recipe.model.kind} "
             + (f"on the `{recipe.model.backbone}` backbone" + (f" (first {config.get('backbone_layers')} blocks)"
                                                                  if config.get("backbone_layers") else "")
                if recipe.model.kind == "dt" else "(the behaviour-cloning baseline)")
             + f", {size_kib:.0f} KiB on disk. Use it with `--abr llm --llm-checkpoint {checkpoint}`.", "",
             "## Data", "",
             f"- Training traces: {', '.join(recipe.traces)} plus {recipe.synthetic.count} synthetic traces "
             f"(seed {recipe.synthetic.seed}, {recipe.synthetic.min_mbps}-{recipe.synthetic.max_mbps} Mbps levels held "
             f"{recipe.synthetic.min_hold_s}-{recipe.synthetic.max_hold_s} s), {recipe.starts_per_trace} session "
             f"start(s) per trace ({trail['training_traces']} traces).",
             f"- Teachers: {', '.join(recipe.teachers)}; DAgger rounds: {recipe.dagger.rounds} "
             f"(teacher {recipe.dagger.teacher}).",
             "- Validation sets never enter a pool; selection reads only their `select` halves.", "",
             "## Recipe", "", "`recipe.yaml` beside this file; reproduce with "
             f"`testbed learn {checkpoint}/recipe.yaml --out DIR` (or `python -m llm adapt --recipe ...`).", "",
             "## Selection", "",
             f"Closed loop, chunk level, on the `select` halves of valid-fcc and valid-norway; round "
             f"{trail['selected_round']} selected: " + json.dumps(trail["rounds"][trail["selected_round"]]
                                                                   ["best_validation"], default=float), "",
             "## Results (chunk level, QoE_lin with the first chunk excluded)", "",
             "| set | traces | policy | QoE | rebuffer s | bitrate Mbps | switches |", "|---|---|---|---|---|---|---|"]
    for key, values in ev.items():
        if key.endswith("decision_ms_p50"):
            continue
        for policy in [p for p in ("learned", "unguarded", "mpc") if p in values["qoe"]]:
            lines.append(f"| {key.split('::')[0]} | {key.split('::')[1]} | {policy} | {values['qoe'][policy]:.3f} "
                         f"| {values['rebuffer_s'][policy]:.2f} | {values['bitrate_mbps'][policy]:.3f} "
                         f"| {values['switches'][policy]:.1f} |")
    lines += ["", "Decision time p50 in that evaluation: " + ", ".join(
        f"{k.split('::')[0]} {v:.2f} ms" for k, v in ev.items() if k.endswith("decision_ms_p50")) + ".", "",
              "## Cost", "", f"Training (experience, rounds, selection) {trail['wall_s'] / 60:.0f} min wall on this "
              f"machine (2 CPU cores, shared), peak RSS {trail['peak_rss_mib']:.0f} MiB.", "",
              "## Licence", "", f"{_licence(recipe.model)}; traces and video from the Pensieve and NetLLM projects "
              "(MIT).", ""]
    path = checkpoint / "README.md"
    path.write_text("\n".join(lines))
    shutil.copyfile(checkpoint.parent / "recipe.yaml", checkpoint / "recipe.yaml")
    return path
