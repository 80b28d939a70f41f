"""Learning an AQM policy end to end from a recipe: teachers, pools, adaptation, DAgger, closed-loop selection.

``testbed learn RECIPE.yaml --out DIR`` for a recipe with ``task: aqm``:

1. **Experience.** Every teacher of the recipe (PI2 at several targets, with Linux's gains or
   with RFC 9332's gains for the mix's RTT, and PIE) owns DualPI2's p' over the wire on every
   training mix (drawn from the recipe's grid of rates, RTTs, flow counts, video and UDP) and
   seed. Validation and evaluation mixes never enter a pool.
2. **Demonstrations.** Per training mix and seed, the ``keep_best`` teacher runs with the
   highest mean reward (the recipe's reward, which prices classic delay against utilisation)
   are the demonstrations: the policy learns which teacher fits which traffic, from what it
   observes (a privileged teacher that knows the RTT included).
3. **Adaptation with closed-loop selection.** The decision transformer trains on the pool;
   every ``eval_every`` steps the candidate runs, packet level, on the validation mixes and is
   scored against DualPI2's frontier there (``testbed.aqm_frontier.score``: relative classic
   delay saved at equal utilisation, L p99 no worse). The best checkpoint is kept. Evaluation
   mixes and seeds are never looked at here. Candidates, DAgger learners and the shipped policy
   all act as the recipe says (``decode``, ``idle_guard_utilisation``).
4. **DAgger.** Each round the current policy acts on the training mixes (fresh seeds); the
   mix's teacher relabels every state the policy visited with its own answer from that state
   (PI2 stepping from the p' in force, ``follow_applied``); those labels join the pool and the
   policy trains again. The testbed's live shadows take no arguments, so the teacher, whose
   target and gains differ per mix, relabels the logged states after the run: the same
   computation a live shadow makes, written as ``shadow`` rows of a decisions file.

The output directory holds ``checkpoint/`` (the selected policy, ready for ``--aqm llm``),
``recipe.yaml`` (as run), ``learn.json`` (the trail: data, teachers chosen, rounds, selection
history, wall time, peak memory) and the pools, rounds and selection runs. Teacher runs and
frontier runs live in a results store (``--store``, default ``<out>/runs``) that resumes and
that ``benchmarks.bench_aqm_frontier`` shares.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.aqm import Pi2Controller, PieController
from agents.protocol.control_points import AqmObservation, aqm_action_grid
from agents.serve import aqm_grid_index
from emulation.config import AqmRewardWeights
from testbed.aqm_cells import Cell, CellResult, Controller, RunSettings, run_cells
from testbed.aqm_frontier import AqmPoint, Frontier, mean_point, place
from testbed.aqm_mix import Mix, MixGrid, check_disjoint

#: DualPI2's update interval (Linux's default): RFC 9332's gain rule is written in it.
TUPDATE_S = 0.016
#: RTTs below this are treated as this in the gain rule (the RFC sizes gains for the largest RTT expected).
GAIN_RTT_FLOOR_MS = 20.0
#: PI2 targets that draw DualPI2's frontier. Utilisation climbs steeply between 1 and 7 ms and the
#: frontier joins its points by straight lines, which lie below that concave curve: with only 2 and 5 ms
#: there, a point between them looked beyond a frontier that denser targets put it inside of.
FRONTIER_TARGETS_MS = (1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def recipe_task(path: str | Path) -> str:
    """The ``task`` a recipe file names (``abr`` when it names none); unreadable files are left to the loaders."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return "abr"
    return str(data.get("task", "abr")) if isinstance(data, dict) else "abr"


def rtt_gains(rtt_ms: float) -> tuple[float, float]:
    """RFC 9332 Appendix A's PI2 gains for a path of ``rtt_ms``: alpha = 0.1 Tupdate / RTT^2, beta = 0.3 / RTT."""
    rtt_s = max(rtt_ms, GAIN_RTT_FLOOR_MS) / 1e3
    return 0.1 * TUPDATE_S / rtt_s**2, 0.3 / rtt_s


class TeacherSpec(_Strict):
    """A classic controller that demonstrates: PI2 at a target (Linux's gains or the mix's RTT rule) or PIE."""

    policy: Literal["pi2", "pie"]
    target_ms: float | None = Field(None, gt=0)
    #: 'default': Linux's alpha 0.16 Hz / beta 3.2 Hz (or alpha_hz / beta_hz where given); 'rtt': RFC 9332's
    #: rule for the mix's base RTT (a privileged teacher: the learner never sees the RTT)
    gains: Literal["default", "rtt"] = "default"
    #: PI2 gains of every mix in place of Linux's (both or neither; not with gains: rtt)
    alpha_hz: float | None = Field(None, gt=0)
    beta_hz: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _gains_given_once(self) -> TeacherSpec:
        if (self.alpha_hz is None) != (self.beta_hz is None):
            raise ValueError("give both alpha_hz and beta_hz, or neither")
        if self.alpha_hz is not None and (self.policy != "pi2" or self.gains == "rtt"):
            raise ValueError("alpha_hz and beta_hz are a pi2 teacher's fixed gains (not with pie or gains: rtt)")
        return self

    @property
    def label(self) -> str:
        name = self.policy + ("-rtt" if self.gains == "rtt" else "")
        if self.alpha_hz is not None:
            name += f"-a{self.alpha_hz:g}-b{self.beta_hz:g}"
        return name + (f"-{self.target_ms:g}ms" if self.target_ms is not None else "")

    def _gains(self, mix: Mix) -> dict:
        if self.gains == "rtt":
            return dict(zip(("alpha_hz", "beta_hz"), rtt_gains(mix.rtt_ms), strict=True))
        return {"alpha_hz": self.alpha_hz, "beta_hz": self.beta_hz} if self.alpha_hz is not None else {}

    def controller(self, mix: Mix, grid: int | None) -> Controller:
        """The teacher on ``mix``, its answers rounded to the learner's p' grid of ``grid`` values (None: as given)."""
        if self.policy == "pie":
            return Controller("pie", grid=grid)
        name = "pi2-rtt" if self.gains == "rtt" else None
        return Controller("pi2", target_ms=self.target_ms, **self._gains(mix), name=name, grid=grid)

    def expert(self, mix: Mix) -> Pi2Controller | PieController:
        """The teacher's controller on ``mix``, for relabelling (see :func:`relabel`)."""
        target = {"target_s": self.target_ms / 1e3} if self.target_ms is not None else {}
        if self.policy == "pie":
            return PieController(**target)
        return Pi2Controller(**target, **self._gains(mix))


class PoolSpec(_Strict):
    #: per training mix and seed, the teacher runs with the highest mean reward kept (None: every run)
    keep_best: int | None = Field(1, ge=1)
    n_actions: int = Field(17, ge=2)
    history_ticks: int = Field(8, ge=1)
    #: 'grid': teachers act on the learner's p' grid and label with grid values; 'continuous': teachers act
    #: and relabel with their own p', which the policy learns as two-hot weights on the neighbouring grid
    #: values (llm.features.p_prime_two_hot), so its expected log p' can reproduce a continuous controller
    labels: Literal["grid", "continuous"] = "grid"


class DaggerSpec(_Strict):
    rounds: int = Field(0, ge=0)
    #: seed of the policy's runs in round r: seeds[r - 1] (fresh states each round)
    seeds: list[int] = Field(default_factory=lambda: [11, 12, 13])
    #: retrain from scratch on the grown pool (True) or continue from the last weights (False)
    from_scratch: bool = False
    #: training settings that differ in DAgger rounds (e.g. a shorter run when continuing)
    training: dict = Field(default_factory=dict)


class AqmRecipe(_Strict):
    """Everything that makes a shipped AQM policy, as a YAML file beside it."""

    name: str
    task: Literal["aqm"] = "aqm"
    #: 'tiny' (random, built into the checkpoint), 'default' (SmolLM2-135M) or a local model directory
    backbone: str = "tiny"
    duration_s: float = Field(15.0, gt=0)
    warmup_s: float = Field(5.0, ge=0)
    #: AQM reward weights and targets (emulation.config.AqmRewardWeights) of every agent run
    reward: dict = Field(default_factory=dict)
    train: MixGrid
    train_seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    #: mixes and seeds of closed-loop selection
    validation: list[Mix] = Field(min_length=1)
    validation_seeds: list[int] = Field(default_factory=lambda: [101], min_length=1)
    #: held-out mixes and seeds results are reported on (benchmarks.bench_aqm_frontier); never used here
    evaluation: list[Mix] = Field(default_factory=list)
    evaluation_seeds: list[int] = Field(default_factory=lambda: [201, 202])
    #: PI2 targets of DualPI2's frontier: dense where utilisation climbs fastest (see FRONTIER_TARGETS_MS)
    frontier_targets_ms: list[float] = Field(default_factory=lambda: list(FRONTIER_TARGETS_MS), min_length=2)
    teachers: list[TeacherSpec] = Field(min_length=1)
    pool: PoolSpec = Field(default_factory=PoolSpec)
    dagger: DaggerSpec = Field(default_factory=DaggerSpec)
    #: llm.train.TrainSettings fields (select_on is closed_loop)
    training: dict = Field(default_factory=dict)
    #: how the policy acts, in selection, in DAgger rounds and as shipped (llm.policy.PolicyConfig.decode):
    #: 'expected' applies the p' at the expected log p' of the action distribution (between grid values)
    decode: Literal["argmax", "sample", "expected"] = "expected"
    #: the idle guard it acts behind (agents.aqm.guard.IdleGuard: the utilisation below which an empty
    #: queue lowers p'); None: no guard
    idle_guard_utilisation: float | None = Field(None, gt=0, le=1)
    #: torch threads of the training process (the machine's cores are shared with the simulations)
    threads: int = Field(2, ge=1)
    #: simulations run at a time
    jobs: int = Field(2, ge=1)

    @classmethod
    def load(cls, path: str | Path) -> AqmRecipe:
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
        try:
            recipe.check()
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return recipe

    def check(self) -> None:
        """Sets disjoint, evaluation seeds unseen, reward keys known."""
        try:
            AqmRewardWeights.model_validate(self.reward)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"reward: {problems}") from None
        check_disjoint({"training": self.training_mixes(), "validation": self.validation,
                        "evaluation": self.evaluation})
        used = set(self.train_seeds) | set(self.validation_seeds) | set(self.dagger.seeds[: self.dagger.rounds])
        if seen := sorted(used & set(self.evaluation_seeds)):
            raise ValueError(f"evaluation seeds {seen} are also used for training or selection")
        labels = [t.label for t in self.teachers]
        if len(set(labels)) < len(labels):
            raise ValueError(f"teachers repeated: {labels}")
        if len(self.dagger.seeds) < self.dagger.rounds:
            raise ValueError(f"dagger: {self.dagger.rounds} rounds need as many seeds, got {self.dagger.seeds}")

    def training_mixes(self) -> list[Mix]:
        return self.train.mixes(exclude=[*self.validation, *self.evaluation])

    def settings(self) -> RunSettings:
        return RunSettings(self.duration_s, self.warmup_s, dict(self.reward))

    def acting(self) -> dict:
        """The checkpoint config entries that say how the policy acts (set on every policy this recipe runs)."""
        return {"decode": self.decode, "idle_guard_utilisation": self.idle_guard_utilisation}


def set_acting(checkpoint: Path, recipe: AqmRecipe) -> None:
    """Write how ``recipe``'s policy acts into a saved checkpoint's config."""
    path = Path(checkpoint) / "policy_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | recipe.acting(), indent=2))


def frontier_cells(mixes: list[Mix], seeds: list[int], targets_ms: list[float]) -> list[Cell]:
    """In-queue DualPI2 at every target, on every mix and seed: the frontier's runs."""
    return [Cell(m, Controller("dualpi2", target_ms=t), s) for m in mixes for t in targets_ms for s in seeds]


def target_points(results: list[CellResult]) -> dict[str, list[AqmPoint]]:
    """Per mix, the mean point (over seeds) of each controller of ``results`` (the swept targets)."""
    by_mix: dict[str, dict[str, list[AqmPoint]]] = {}
    for r in results:
        by_mix.setdefault(r.cell.mix.name, {}).setdefault(r.cell.controller.label, []).append(r.point)
    return {mix: [mean_point(points, label) for label, points in by_label.items()] for mix, by_label in by_mix.items()}


def frontiers(results: list[CellResult]) -> dict[str, Frontier]:
    """Per mix, DualPI2's frontier: the Pareto set of its targets' mean points."""
    return {mix: Frontier.from_points(points) for mix, points in target_points(results).items()}


def seed_frontiers(results: list[CellResult]) -> dict[tuple[str, int], Frontier]:
    """Per mix and seed, DualPI2's frontier of that seed's runs alone.

    A policy's run placed against the frontier of its own seed (the same flow starts, video and UDP
    draws) is a paired comparison: seed-to-seed variation, which moves whole frontiers by tenths of a
    millisecond and of a percent, drops out of each seed's verdict.
    """
    by_seed: dict[tuple[str, int], list[AqmPoint]] = {}
    for r in results:
        by_seed.setdefault((r.cell.mix.name, r.cell.seed), []).append(r.point)
    return {key: Frontier.from_points(points) for key, points in by_seed.items()}


def _require_ok(results: list[CellResult], what: str) -> None:
    failed = [r for r in results if r.status != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} {what} run(s) failed, first: {failed[0].run_dir}: {failed[0].error}")


def mean_reward(decisions: Path) -> float:
    """Mean per-tick reward of the acting policy of a decisions file."""
    table = pq.read_table(decisions, columns=["role", "reward", "step"]).to_pandas()
    rewards = table.loc[(table["role"] == "acting") & (table["step"] > 0), "reward"]
    return float(rewards.mean())


def choose_demonstrations(results: list[CellResult], keep_best: int | None) -> dict[tuple[str, int], list[CellResult]]:
    """Per (mix, seed), the teacher runs kept as demonstrations, best mean reward first."""
    groups: dict[tuple[str, int], list[tuple[float, CellResult]]] = {}
    for r in results:
        groups.setdefault((r.cell.mix.name, r.cell.seed), []).append((mean_reward(r.decisions), r))
    return {key: [r for _, r in sorted(runs, key=lambda x: -x[0])[: keep_best or len(runs)]]
            for key, runs in groups.items()}


def _acting_rows(decisions: Path) -> tuple[list[dict], pa.Schema]:
    table = pq.read_table(decisions)
    return table.filter(pc.equal(table.column("role"), "acting")).to_pylist(), table.schema


def _write_rows(rows: list[dict], schema: pa.Schema, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out)
    return out


def grid_actions_as_p_prime(decisions: Path, n_actions: int | None, out: Path) -> Path:
    """A run's acting decisions with each action as the p' applied: a discrete control point's grid indices
    become their grid values (``n_actions`` its grid size; None: the actions are p' already)."""
    rows, schema = _acting_rows(decisions)
    if n_actions is not None:
        grid = aqm_action_grid(n_actions)
        for row in rows:
            row["action"] = [float(grid[int(a)]) for a in row["action"]]
    return _write_rows(rows, schema, out)


def _integrator(expert: Pi2Controller | PieController) -> float:
    return expert.p_prime if isinstance(expert, Pi2Controller) else math.sqrt(expert.drop_prob)


def _set_integrator(expert: Pi2Controller | PieController, p_prime: float) -> None:
    if isinstance(expert, Pi2Controller):
        expert.p_prime = p_prime
    else:
        expert.drop_prob = p_prime**2


def relabel(decisions: Path, expert: Pi2Controller | PieController, label: str, n_actions: int, out: Path,
            continuous: bool = False) -> Path:
    """The acting rows of ``decisions`` as ``shadow`` rows whose actions are ``expert``'s from each state.

    On the grid, the expert acts on the same p' grid as the learner, keeping its own continuous
    integrator between ticks (the memory that makes a quantised PI2 step once its error has added
    up to a grid step) but moving it to the p' in force whenever the learner applied another grid
    value than the integrator rounds to: its answer is then PI2's update from the learner's state.
    ``continuous``: the integrator starts every tick from the p' in force and the label is its own p'.
    """
    grid = aqm_action_grid(n_actions)
    rows, schema = _acting_rows(decisions)
    for row in rows:
        if row["step"] == 0:
            expert.reset()
        obs = AqmObservation.from_vector(row["obs"])
        if continuous or aqm_grid_index(_integrator(expert), n_actions) != aqm_grid_index(obs.p_prime, n_actions):
            _set_integrator(expert, obs.p_prime)
        p_prime = expert.act(obs)
        row["action"] = [float(p_prime if continuous else grid[aqm_grid_index(p_prime, n_actions)])]
        row["policy"], row["role"] = label, "shadow"
    return _write_rows(rows, schema, out)


@contextmanager
def _one_thread_children():
    """Agent processes started meanwhile use one torch thread each (several runs share the cores)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


class FrontierSelector:
    """Scores a candidate policy by its place against DualPI2's frontier on the validation mixes (packet level)."""

    def __init__(self, recipe: AqmRecipe, store: Path, work: Path, log: Callable[[str], None] = print) -> None:
        self.recipe, self.work, self.log = recipe, work, log
        self.settings = recipe.settings()
        results = run_cells(frontier_cells(recipe.validation, recipe.validation_seeds, recipe.frontier_targets_ms),
                            store, self.settings, recipe.jobs, log=log)
        _require_ok(results, "validation frontier")
        self.frontiers = frontiers(results)
        self.passes = 0
        #: directory the training run writes (a tiny backbone lives there)
        self.round_dir: Path | None = None

    def _save(self, policy, config) -> Path:
        from llm.train import save_checkpoint

        backbone = config.backbone
        if backbone != "default" and not Path(backbone).is_absolute():
            backbone = str((self.round_dir / backbone).resolve())
        return save_checkpoint(policy, replace(config, backbone=backbone, **self.recipe.acting()),
                               self.work / f"candidate-{self.passes}")

    def evaluate(self, checkpoint: Path, name: str, run_dir: Path) -> dict:
        """Run ``checkpoint`` on the validation mixes; its placements and their mean score."""
        cells = [Cell(m, Controller("llm", checkpoint=str(checkpoint), name=name), s)
                 for m in self.recipe.validation for s in self.recipe.validation_seeds]
        with _one_thread_children():
            results = run_cells(cells, run_dir, self.settings, self.recipe.jobs, fresh=True, log=self.log)
        _require_ok(results, "selection")
        metrics: dict[str, float] = {}
        scores, verdicts = [], Counter()
        for mix in self.recipe.validation:
            point = mean_point([r.point for r in results if r.cell.mix == mix])
            placed = place(point, self.frontiers[mix.name])
            scores.append(placed.score)
            verdicts[placed.verdict] += 1
            metrics[f"{mix.name}_score"] = placed.score
            metrics[f"{mix.name}_c_delay_ms"] = point.c_delay_ms
            metrics[f"{mix.name}_utilisation"] = point.utilisation
        metrics["beyond"] = float(verdicts["beyond"])
        metrics["score"] = float(np.mean(scores))
        return metrics

    def __call__(self, policy, config) -> dict:
        self.passes += 1
        checkpoint = self._save(policy, config)
        try:
            return self.evaluate(checkpoint, "candidate", self.work / f"pass-{self.passes}")
        finally:
            shutil.rmtree(checkpoint, ignore_errors=True)


def _train(recipe: AqmRecipe, pool: Path, out: Path, selector: FrontierSelector, log: Callable[[str], None],
           init: Path | None, overrides: dict) -> dict:
    from llm.train import TrainSettings, adapt

    settings = TrainSettings.from_dict({**recipe.training, **overrides, "select_on": "closed_loop"})
    selector.round_dir = out
    return adapt(pool, out, backbone=recipe.backbone, settings=settings, log=log, selector=selector,
                 init_checkpoint=init)


def learn(recipe: AqmRecipe, out_dir: str | Path, store: str | Path | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Run the whole recipe into ``out_dir`` (runs kept in ``store``); returns the trail written to ``learn.json``."""
    import torch

    from llm.pool import build_pool

    recipe.check()
    torch.set_num_threads(recipe.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(store) if store else out / "runs"
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    t0 = time.perf_counter()
    settings = recipe.settings()
    mixes = recipe.training_mixes()
    log(f"[{recipe.name}] {len(mixes)} training mixes x seeds {recipe.train_seeds}; "
        f"teachers {[t.label for t in recipe.teachers]}")
    n_actions = recipe.pool.n_actions
    continuous = recipe.pool.labels == "continuous"
    teacher_grid = None if continuous else n_actions
    teacher_cells = {(m.name, s, t.label): Cell(m, t.controller(m, teacher_grid), s)
                     for m in mixes for s in recipe.train_seeds for t in recipe.teachers}
    results = run_cells(list(teacher_cells.values()), store, settings, recipe.jobs, log=log)
    _require_ok(results, "teacher")
    teacher_of_cell = {cell: next(t for t in recipe.teachers if t.label == key[2]) for key, cell in teacher_cells.items()}
    chosen = choose_demonstrations(results, recipe.pool.keep_best)
    # the teacher that relabels a mix's DAgger states: its most often best demonstrator
    mix_teacher = {m.name: Counter(teacher_of_cell[runs[0].cell].label for (name, _), runs in chosen.items()
                                   if name == m.name).most_common(1)[0][0] for m in mixes}
    teacher_of = {t.label: t for t in recipe.teachers}
    demos = [grid_actions_as_p_prime(r.decisions, teacher_grid, out / "demonstrations" /
                                     f"{r.cell.mix.name}-{teacher_of_cell[r.cell].label}-{r.cell.seed}.parquet")
             for runs in chosen.values() for r in runs]
    trail: dict = {"recipe": recipe.name, "training_mixes": [m.name for m in mixes],
                   "teacher_runs": len(results), "demonstrations": len(demos),
                   "mix_teacher": mix_teacher, "experience_s": time.perf_counter() - t0, "rounds": []}
    log(f"[{recipe.name}] experience: {trail['experience_s']:.0f} s; demonstrations by teacher "
        f"{dict(Counter(teacher_of_cell[r.cell].label for runs in chosen.values() for r in runs))}")

    selector = FrontierSelector(recipe, store, out / "selection", log)
    label_files: list[Path] = []
    checkpoint: Path | None = None
    for round_ in range(recipe.dagger.rounds + 1):
        t_round = time.perf_counter()
        if round_ > 0:  # DAgger: the policy acts, the mix's teacher relabels the states it visited
            seed = recipe.dagger.seeds[round_ - 1]
            dagger_dir = out / f"dagger-{round_}"
            learner = [Cell(m, Controller("llm", checkpoint=str(checkpoint), name=f"round-{round_ - 1}"), seed)
                       for m in mixes]
            with _one_thread_children():
                runs = run_cells(learner, dagger_dir / "runs", settings, recipe.jobs, fresh=True, log=log)
            _require_ok(runs, "DAgger")
            for r in runs:
                label = mix_teacher[r.cell.mix.name]
                label_files.append(relabel(r.decisions, teacher_of[label].expert(r.cell.mix), label, n_actions,
                                           dagger_dir / "labels" / f"{r.cell.mix.name}.parquet", continuous))
        pool_dir = out / f"pool-{round_}"
        build_pool([*demos, *((f, ("shadow",)) for f in label_files)], pool_dir, "aqm",
                   n_actions=recipe.pool.n_actions, history_ticks=recipe.pool.history_ticks)
        round_dir = out / f"round-{round_}"
        init = None if (round_ == 0 or recipe.dagger.from_scratch) else checkpoint
        summary = _train(recipe, pool_dir, round_dir, selector, log, init,
                         recipe.dagger.training if round_ > 0 else {})
        set_acting(round_dir, recipe)  # the DAgger learner and the shipped policy act as selection saw them
        best = summary["best_validation"]
        trail["rounds"].append({"round": round_, "pool": str(pool_dir), "label_files": len(label_files),
                                "best_validation": best, "steps": summary["optimizer_steps"],
                                "train_wall_s": summary["wall_s"], "round_wall_s": time.perf_counter() - t_round})
        log(f"[{recipe.name}] round {round_}: best {best}")
        checkpoint = round_dir
    best_round = max(trail["rounds"], key=lambda r: r["best_validation"]["score"])
    final = out / "checkpoint"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out / f"round-{best_round['round']}", final)
    trail["selected_round"] = best_round["round"]
    trail["wall_s"] = time.perf_counter() - t0
    trail["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trail["peak_rss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (out / "learn.json").write_text(json.dumps(trail, indent=2, default=float))
    log(f"[{recipe.name}] done in {trail['wall_s']:.0f} s: round {best_round['round']} selected, checkpoint {final}")
    return trail
