"""The run grid: which runs a comparison or a sweep is made of.

A grid is scenarios x parameter values x policies x seeds; each cell is a
:class:`RunSpec` with its own run directory
``<out>/<scenario>/<policy>/<param-tag>/<seed>/``, so an interrupted grid can
be resumed cell by cell (see ``testbed.store``).

A *policy string* names what controls a run: ``aqm=X`` (an AQM agent policy,
or ``dualpi2`` for the in-queue PI2 of the scenario), ``abr=Y`` (an ABR agent
for every video client), ``shadow=Z`` (a policy logged beside the acting
one), joined with ``+``; a bare name is given to the control that knows it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emulation.config import SimulationConfig
from testbed.runner import AgentSpec, ExternalAgent, check_under, parse_agent, with_agents
from testbed.scenario import ScenarioError, load_scenario, resolve_scenario_path

#: The bare policy meaning "no AQM agent": the scenario's own queue disc (in-queue PI2 for dualpi2).
IN_QUEUE = "dualpi2"
#: Parameter tag of a run without swept parameters.
DEFAULT_TAG = "default"
#: Swept keys that are repetitions (samples of one condition) rather than conditions: reports pool them like seeds.
SAMPLE_KEYS = ("bottleneck.trace",)


class GridError(ValueError):
    """A policy string, seed range or sweep file is invalid; the message says where and what was expected."""


@dataclass(frozen=True)
class Policy:
    """What controls one run: AQM agent policy (None: in-queue), ABR agent policy (None: in-process), shadows."""

    aqm: str | None = None
    abr: str | None = None
    shadows: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """Canonical policy string; also the run directory's policy component."""
        parts = [f"aqm={self.aqm}"] if self.aqm else []
        parts += [f"abr={self.abr}"] if self.abr else []
        parts += [f"shadow={s}" for s in self.shadows]
        return "+".join(parts) or IN_QUEUE


def _known_policies() -> dict[str, list[str]]:
    from agents.registry import policy_names

    return {control: policy_names(control) for control in ("aqm", "abr")}


def parse_policy(text: str, known: Mapping[str, list[str]] | None = None) -> Policy:
    """Parse one policy string (``aqm=pi2+abr=bba``, ``bba``, ``dualpi2``, ``aqm=fixed+shadow=pi2``)."""
    known = dict(known or _known_policies())
    aqm: str | None = None
    abr: str | None = None
    shadows: list[str] = []
    if not text.strip():
        raise GridError("empty policy string")
    for part in text.strip().split("+"):
        key, sep, name = (s.strip() for s in part.partition("="))
        if not sep:
            key, name = _resolve_bare(key, known, text), key
        if not name:
            raise GridError(f"policy '{text}': '{part}' names no policy")
        if key == "aqm":
            name = name.removesuffix("-agent")
            if name != IN_QUEUE and name not in known["aqm"]:
                raise GridError(f"policy '{text}': unknown aqm policy '{name}'; choices: "
                                f"{', '.join([IN_QUEUE, *known['aqm']])}")
            if aqm is not None:
                raise GridError(f"policy '{text}': aqm given twice")
            aqm = name
        elif key == "abr":
            if name not in known["abr"]:
                raise GridError(f"policy '{text}': unknown abr policy '{name}'; choices: {', '.join(known['abr'])}")
            if abr is not None:
                raise GridError(f"policy '{text}': abr given twice")
            abr = name
        elif key == "shadow":
            if not any(name in names for names in known.values()):
                raise GridError(f"policy '{text}': unknown shadow policy '{name}'; choices: "
                                f"{', '.join(sorted({n for names in known.values() for n in names}))}")
            shadows.append(name)
        else:
            raise GridError(f"policy '{text}': unknown key '{key}' (expected aqm=, abr= or shadow=)")
    return Policy(aqm=None if aqm == IN_QUEUE else aqm, abr=abr, shadows=tuple(sorted(set(shadows))))


def _resolve_bare(name: str, known: Mapping[str, list[str]], text: str) -> str:
    """The control a bare policy name belongs to; ambiguous or unknown names are errors listing the choices."""
    if name.removesuffix("-agent") == IN_QUEUE:
        return "aqm"
    controls = [c for c, names in known.items() if name in names or (c == "aqm" and name.removesuffix("-agent") in names)]
    if len(controls) == 1:
        return controls[0]
    if controls:
        raise GridError(f"policy '{text}': '{name}' is both an aqm and an abr policy; write aqm={name} or abr={name}")
    choices = [IN_QUEUE, *known["aqm"], *known["abr"]]
    raise GridError(f"policy '{text}': unknown policy '{name}'; choices: {', '.join(choices)} "
                    f"(or aqm=X, abr=Y, shadow=Z joined with +)")


def parse_policies(text: str | Iterable[str], known: Mapping[str, list[str]] | None = None) -> list[Policy]:
    """``"dualpi2,aqm=fixed"`` or a list of policy strings -> policies, duplicates refused."""
    items = [s for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip()]
    if not items:
        raise GridError("no policies given (e.g. --policies dualpi2,aqm=pi2)")
    policies = [parse_policy(str(item), known) for item in items]
    labels = [p.label for p in policies]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise GridError(f"policies repeated: {', '.join(dupes)}")
    return policies


def parse_seeds(text: str | int | Iterable[int]) -> list[int]:
    """``"1..10"``, ``"1,2,5"``, ``"1..3,7"``, an int or a list of ints -> sorted distinct seeds (>= 1)."""
    if isinstance(text, int):
        items: list[str] = [str(text)]
    elif isinstance(text, str):
        items = [s.strip() for s in text.split(",") if s.strip()]
    else:
        items = [str(s) for s in text]
    seeds: set[int] = set()
    for item in items:
        match = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", item)
        if match:
            low, high = int(match[1]), int(match[2])
            if high < low:
                raise GridError(f"seed range '{item}' runs backwards")
            seeds.update(range(low, high + 1))
        elif item.isdigit():
            seeds.add(int(item))
        else:
            raise GridError(f"seed '{item}' is not a number or a range like 1..10")
    if not seeds:
        raise GridError("no seeds given (e.g. 1..10 or 1,2,5)")
    if min(seeds) < 1:
        raise GridError("seeds start at 1")
    return sorted(seeds)


def _tag_value(key: str, value: object) -> str:
    if key in SAMPLE_KEYS and isinstance(value, str):
        return Path(value).name
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def param_tag(params: Mapping[str, object]) -> str:
    """Directory name of a parameter combination: ``key=value,...`` with the last key component, or a hash if long."""
    if not params:
        return DEFAULT_TAG
    short = {k: k.rsplit(".", 1)[-1] for k in params}
    names = short if len(set(short.values())) == len(short) else {k: k for k in params}
    tag = ",".join(f"{names[k]}={_tag_value(k, v)}" for k, v in params.items())
    tag = re.sub(r"[^A-Za-z0-9._=,+-]", "_", tag)
    if len(tag) > 100:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]
        tag = f"{tag[:80]}-{digest}"
    return tag


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: everything needed to run it anywhere the paths are visible."""

    scenario: str  # scenario YAML path, absolute
    scenario_name: str
    overrides: dict
    seed: int
    policy: str  # canonical policy string (Policy.label)
    run_dir: Path
    #: the swept subset of overrides, in sweep order (the report groups on them)
    params: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return param_tag(self.params)

    @property
    def name(self) -> str:
        """Short name for progress lines."""
        return f"{self.scenario_name}/{self.policy}/{self.tag}/{self.seed}"

    def build(self, agent_timeout_s: float = 30.0) -> tuple[SimulationConfig, list[AgentSpec]]:
        """The run's config and agents; agent ports are chosen here, so call it where the run executes."""
        config = load_scenario(self.scenario, {**self.overrides, "seed": self.seed})
        policy = parse_policy(self.policy)
        return with_agents(config, policy.aqm, policy.abr, policy.shadows, timeout_s=agent_timeout_s,
                           policy_server=policy_server_choice())

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "scenario_name": self.scenario_name, "overrides": self.overrides,
                "seed": self.seed, "policy": self.policy, "run_dir": str(self.run_dir), "params": self.params}

    @classmethod
    def from_json(cls, data: Mapping) -> RunSpec:
        return cls(scenario=data["scenario"], scenario_name=data["scenario_name"], overrides=dict(data["overrides"]),
                   seed=int(data["seed"]), policy=data["policy"], run_dir=Path(data["run_dir"]),
                   params=dict(data.get("params") or {}))


def policy_server_choice() -> str | ExternalAgent:
    """Where the LLM control points of grid runs find their policy server: ``$TESTBED_POLICY_SERVER``
    (``auto``: one per run, the default; ``none``; or ``tcp://HOST:PORT``, one server for the whole grid)."""
    choice = os.environ.get("TESTBED_POLICY_SERVER", "auto")
    return parse_agent(choice, "--policy-server") if choice.startswith("tcp://") else choice


def expand_grid(scenarios: Iterable[str], policies: Iterable[Policy], seeds: Iterable[int], out: Path,
                overrides: Mapping[str, object] | None = None,
                params: Mapping[str, list] | None = None) -> list[RunSpec]:
    """Every combination of scenario x parameter values x policy x seed, each checked by building it once."""
    out = Path(out).resolve()
    params = dict(params or {})
    for key, values in params.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"parameter '{key}': expected a non-empty list of values")
    combos = [dict(zip(params, values, strict=True)) for values in itertools.product(*params.values())]
    policies, seeds = list(policies), list(seeds)
    specs: list[RunSpec] = []
    for scenario in scenarios:
        path = str(resolve_scenario_path(scenario).resolve())
        for combo in combos:
            merged = {k: v for k, v in {**(overrides or {}), **combo}.items() if v is not None}
            try:
                config = load_scenario(path, merged)
            except ScenarioError as exc:
                where = f" with {', '.join(f'{k}={v}' for k, v in combo.items())}" if combo else ""
                raise GridError(f"scenario '{scenario}'{where}:\n{exc}") from None
            for policy in policies:
                try:
                    with_agents(config, policy.aqm, policy.abr, policy.shadows)
                except ValueError as exc:
                    raise GridError(f"policy '{policy.label}' on scenario '{config.name}': {exc}") from None
                for seed in seeds:
                    run_dir = out / config.name / policy.label / param_tag(combo) / str(seed)
                    check_under(run_dir, out)
                    specs.append(RunSpec(path, config.name, merged, seed, policy.label, run_dir, combo))
    dirs = [s.run_dir for s in specs]
    clash = sorted({str(d) for d in dirs if dirs.count(d) > 1})
    if clash:
        raise GridError(f"two runs would share a directory (parameter values too alike?): {clash[0]}")
    return specs


def trace_files(directory: Path) -> list[str]:
    """Bandwidth trace files in ``directory`` (one run per trace), hidden files skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GridError(f"--traces {directory}: not a directory")
    files = sorted(str(p.resolve()) for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise GridError(f"--traces {directory}: no trace files in it")
    return files


class SweepFile(BaseModel):
    """``SWEEP.yaml``: what a sweep runs. Relative ``out`` is relative to the working directory."""

    model_config = ConfigDict(extra="forbid")

    scenario: str | None = None
    scenarios: list[str] | None = None
    #: dotted scenario key -> values; the sweep runs every combination
    params: dict[str, list] = Field(default_factory=dict)
    policies: list[str] | str = IN_QUEUE
    seeds: list[int] | str | int = 1
    out: str | None = None
    #: simulated seconds of every run (default: each scenario's)
    duration_s: float | None = Field(None, gt=0)
    #: fixed overrides applied to every run (dotted keys)
    overrides: dict[str, object] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _non_empty(cls, params: dict[str, list]) -> dict[str, list]:
        for key, values in params.items():
            if not values:
                raise ValueError(f"'{key}' has no values")
        return params

    @model_validator(mode="after")
    def _one_scenario_key(self) -> SweepFile:
        if (self.scenario is None) == (self.scenarios is None):
            raise ValueError("give exactly one of scenario: NAME or scenarios: [NAME, ...]")
        if self.scenarios is not None and not self.scenarios:
            raise ValueError("scenarios: is empty")
        return self

    def scenario_list(self) -> list[str]:
        return [self.scenario] if self.scenario else list(self.scenarios or [])


def load_sweep(path: Path) -> SweepFile:
    """Read and validate a sweep file; errors name the file and key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GridError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: a sweep file is a YAML mapping (scenario:, params:, policies:, seeds:, out:)")
    try:
        sweep = SweepFile.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: invalid sweep file"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key (misspelt?)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {key}: {msg.removeprefix('Value error, ')}")
        raise GridError("\n".join(lines)) from None
    # Scenario paths in a sweep file may be written relative to the file.
    scenarios = []
    for name in sweep.scenario_list():
        beside = path.parent / name
        scenarios.append(str(beside) if name.endswith((".yaml", ".yml")) and beside.is_file() else name)
    update = {"scenario": scenarios[0], "scenarios": None} if sweep.scenario else {"scenarios": scenarios}
    return sweep.model_copy(update=update)


def sweep_specs(path: Path, out: Path | None = None, duration_s: float | None = None) -> list[RunSpec]:
    """The grid of a sweep file; ``out``/``duration_s`` override the file's."""
    sweep = load_sweep(path)
    target = out or sweep.out
    if target is None:
        raise GridError(f"{path}: out: missing (or pass --out DIR)")
    overrides = {**sweep.overrides, "duration_s": duration_s or sweep.duration_s}
    try:
        policies = parse_policies(sweep.policies)
        seeds = parse_seeds(sweep.seeds)
        return expand_grid(sweep.scenario_list(), policies, seeds, Path(target), overrides, sweep.params)
    except (GridError, ScenarioError) as exc:
        raise GridError(f"{path}: {exc}") from None
