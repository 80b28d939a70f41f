"""Runs of AQM controllers on traffic mixes, kept in a store that resumes.

A cell is (mix, controller, seed) under fixed :class:`RunSettings`; its run directory is
``<out>/<mix>/<controller label>/<seed>/``, an ordinary run directory plus ``cell.json``.
Controllers: the in-queue DualPI2 at a PI2 target (``dualpi2``, the frontier's points), or an
agent over the wire: ``pi2`` (at a target), ``pie``, ``fixed`` or ``llm`` (a checkpoint),
each optionally with shadow policies, so every decision lands in ``decisions.parquet``.
Cells whose run is ``ok`` with the same ``cell.json`` are kept; a directory holding another
cell is refused rather than mixed in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emulation.config import SimulationConfig
from emulation.rundir import read_json, write_json
from testbed.aqm_frontier import AqmPoint
from testbed.aqm_mix import Mix, mix_scenario
from testbed.runner import run_config, with_agents
from testbed.store import run_state

CELL_FILE = "cell.json"
CONTROLLERS = ("dualpi2", "pi2", "pie", "fixed", "llm")


@dataclass(frozen=True)
class Controller:
    """What owns p' in a run: the in-queue PI2 (``dualpi2``) or an agent policy, with its arguments."""

    kind: str
    target_ms: float | None = None  # dualpi2 / pi2: the PI2 target (None: 15 ms, the default)
    alpha_hz: float | None = None  # dualpi2 / pi2: PI2 gains (None: Linux's 0.16 Hz and 3.2 Hz)
    beta_hz: float | None = None
    checkpoint: str | None = None  # llm
    p_prime: float | None = None  # fixed
    #: an agent's answers rounded to ``aqm_action_grid(grid)`` at the wire (a discrete control point), as a
    #: learned policy's are; None: the p' is applied as answered
    grid: int | None = None
    name: str | None = None  # the label, where the kind and arguments do not say it (an llm checkpoint)
    shadows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CONTROLLERS:
            raise ValueError(f"controller kind {self.kind!r}: expected one of {', '.join(CONTROLLERS)}")
        if self.kind == "llm" and not self.checkpoint:
            raise ValueError("an llm controller needs a checkpoint")
        if self.kind == "dualpi2" and self.shadows:
            raise ValueError("the in-queue DualPI2 has no agent to shadow")
        if (self.alpha_hz is None) != (self.beta_hz is None):
            raise ValueError("give both PI2 gains (alpha_hz and beta_hz) or neither")
        if self.alpha_hz is not None and self.kind not in ("dualpi2", "pi2"):
            raise ValueError(f"PI2 gains given to a {self.kind} controller")
        if self.grid is not None and (self.kind == "dualpi2" or self.grid < 2):
            raise ValueError(f"a grid of {self.grid} p' values for a {self.kind} controller")

    @property
    def label(self) -> str:
        base = self.name or self.kind
        if self.name is None and self.alpha_hz is not None:
            base += f"-a{self.alpha_hz:g}-b{self.beta_hz:g}"
        if self.target_ms is not None:
            base += f"-{self.target_ms:g}ms"
        if self.p_prime is not None:
            base += f"-{self.p_prime:g}"
        if self.grid is not None:
            base += f"-g{self.grid}"
        return base + (f"+shadow-{'-'.join(self.shadows)}" if self.shadows else "")

    def agent_args(self) -> dict:
        if self.kind == "pi2":
            args = {"target_s": self.target_ms / 1e3} if self.target_ms is not None else {}
            return args | ({"alpha_hz": self.alpha_hz, "beta_hz": self.beta_hz} if self.alpha_hz is not None else {})
        if self.kind == "llm":
            return {"checkpoint": str(self.checkpoint)}
        if self.kind == "fixed" and self.p_prime is not None:
            return {"p_prime": self.p_prime}
        return {}


def parse_controller(text: str) -> Controller:
    """A controller from ``kind[:field=value...]``, e.g. ``pie`` or ``pi2:target_ms=2:alpha_hz=0.32:beta_hz=6.4``."""
    kind, *pairs = text.strip().split(":")
    numeric = {"target_ms": float, "alpha_hz": float, "beta_hz": float, "p_prime": float, "grid": int}
    fields: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in numeric | {"checkpoint": str, "name": str}:
            raise ValueError(f"controller {text!r}: {pair!r} is not FIELD=VALUE with FIELD one of "
                             f"{', '.join([*numeric, 'checkpoint', 'name'])}")
        try:
            fields[key] = numeric.get(key, str)(value)
        except ValueError:
            raise ValueError(f"controller {text!r}: {key} needs a number, got {value!r}") from None
    return Controller(kind, **fields)


@dataclass(frozen=True)
class RunSettings:
    """What every run of a store shares."""

    duration_s: float = 15.0
    warmup_s: float = 5.0
    #: AQM reward weights and targets (emulation.config.AqmRewardWeights fields) of agent runs
    reward: dict = field(default_factory=dict)
    agent_timeout_s: float = 60.0


@dataclass(frozen=True)
class Cell:
    mix: Mix
    controller: Controller
    seed: int

    def run_dir(self, out: Path) -> Path:
        return Path(out) / self.mix.name / self.controller.label / str(self.seed)

    def describe(self, settings: RunSettings) -> dict:
        """What makes the run: an in-queue run has no agent, so the reward and agent timeout do not enter."""
        shared = asdict(settings)
        if self.controller.kind == "dualpi2":
            shared = {k: shared[k] for k in ("duration_s", "warmup_s")}
        return json.loads(json.dumps({"mix": self.mix.model_dump(), "controller": asdict(self.controller),
                                      "seed": self.seed, "settings": shared}))

    def build(self, settings: RunSettings) -> tuple[SimulationConfig, list]:
        data = mix_scenario(self.mix, settings.duration_s, settings.warmup_s, self.seed, settings.reward)
        c = self.controller
        if c.kind == "dualpi2":
            params = {"Target": f"{c.target_ms:g}ms"} if c.target_ms is not None else {}
            params |= {"Alpha": c.alpha_hz, "Beta": c.beta_hz} if c.alpha_hz is not None else {}
            data["bottleneck"]["queue"]["params"] = params
        if c.grid is not None:
            data.setdefault("control", {}).setdefault("aqm", {}).update(action="discrete", n_actions=c.grid)
        config = SimulationConfig.model_validate(data)
        aqm = None if c.kind == "dualpi2" else c.kind
        return with_agents(config, aqm, None, c.shadows, timeout_s=settings.agent_timeout_s,
                           aqm_args=c.agent_args())


@dataclass
class CellResult:
    cell: Cell
    run_dir: Path
    status: str  # ok | failed
    error: str | None
    summary: dict | None
    wall_s: float

    @property
    def point(self) -> AqmPoint:
        if self.summary is None:
            raise ValueError(f"{self.run_dir}: no summary ({self.status}: {self.error})")
        return AqmPoint.from_summary(self.summary, self.cell.controller.label)

    @property
    def decisions(self) -> Path:
        return self.run_dir / "agents" / "aqm" / "decisions.parquet"


def _stored(cell: Cell, run_dir: Path, settings: RunSettings) -> CellResult | None:
    """The kept result of an ``ok`` run of this very cell; None if it must run; an error if another cell is there."""
    cell_file = run_dir / CELL_FILE
    if cell_file.exists() and read_json(cell_file) != cell.describe(settings):
        raise ValueError(f"{run_dir} holds another cell's run (see its {CELL_FILE}); use another output directory")
    if cell_file.exists() and run_state(run_dir) == "ok":
        return CellResult(cell, run_dir, "ok", None, read_json(run_dir / "summary.json"), 0.0)
    return None


def run_cell(cell: Cell, out: Path, settings: RunSettings, fresh: bool = False) -> CellResult:
    """Run one cell (or return its kept result); ``fresh`` runs it again whatever is stored."""
    run_dir = cell.run_dir(out)
    if not fresh and (kept := _stored(cell, run_dir, settings)) is not None:
        return kept
    started = time.time()
    try:
        config, agents = cell.build(settings)
        result = run_config(config, run_dir, agents=agents, overwrite=True)
    except (ValueError, OSError, RuntimeError) as exc:
        return CellResult(cell, run_dir, "failed", f"{type(exc).__name__}: {exc}", None, time.time() - started)
    write_json(run_dir / CELL_FILE, cell.describe(settings))
    return CellResult(cell, run_dir, result.status, result.error, result.summary, result.wall_s)


def run_cells(cells: Sequence[Cell], out: Path, settings: RunSettings, jobs: int = 1, fresh: bool = False,
              log: Callable[[str], None] = print) -> list[CellResult]:
    """Run cells ``jobs`` at a time (each is a simulation process plus its agent); results in input order."""
    for cell in cells:  # refuse a mixed store before anything runs
        if not fresh:
            _stored(cell, cell.run_dir(out), settings)
    done = 0

    def one(cell: Cell) -> CellResult:
        nonlocal done
        result = run_cell(cell, out, settings, fresh)
        done += 1
        if result.wall_s or result.status != "ok":
            error = f": {result.error.splitlines()[0]}" if result.error else ""
            log(f"[{done}/{len(cells)}] {result.status} {cell.mix.name}/{cell.controller.label}/{cell.seed} "
                f"{result.wall_s:.1f} s{error}")
        return result

    if jobs <= 1:
        return [one(c) for c in cells]
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="aqm-run")
    try:
        return list(pool.map(one, cells))
    finally:  # on Ctrl-C, cells not started are dropped; running ones end with their run (never orphaned)
        pool.shutdown(wait=True, cancel_futures=True)
