"""Scenario files: find them, read them, and turn them into a validated
``SimulationConfig`` with errors a user can act on (file, key, expectation).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from emulation.config import SimulationConfig

#: The catalogue shipped with the project; TESTBED_SCENARIOS adds a directory in front.
SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


class ScenarioError(ValueError):
    """A scenario file is missing or invalid; the message names the file and key."""


def scenario_dirs() -> list[Path]:
    extra = os.environ.get("TESTBED_SCENARIOS")
    return ([Path(extra)] if extra else []) + [SCENARIO_DIR]


def list_scenarios() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in reversed(scenario_dirs()):
        for path in sorted(directory.glob("*.yaml")):
            found[path.stem] = path
    return dict(sorted(found.items()))


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ScenarioError(f"{path}: scenario file not found")
        return path
    known = list_scenarios()
    if str(name_or_path) not in known:
        raise ScenarioError(f"unknown scenario '{name_or_path}'; known: {', '.join(known) or '(none)'}")
    return known[str(name_or_path)]


def _format_validation(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid scenario"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _apply_overrides(data: dict, overrides: dict) -> dict:
    """Overrides use dotted keys: {"duration_s": 5, "bottleneck.rate_mbps": 50}."""
    data = dict(data)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = value
    return data


def read_scenario_data(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a YAML mapping (name:, flows:, ...), got {type(data).__name__}")
    return data


def load_scenario(name_or_path: str | Path, overrides: dict | None = None) -> SimulationConfig:
    path = resolve_scenario_path(name_or_path)
    data = read_scenario_data(path)
    data.setdefault("name", path.stem)
    overrides = dict(overrides or {})
    if overrides.get("duration_s") is not None and "probes.warmup_s" not in overrides:
        # A shortened run keeps a proportionate warm-up instead of failing validation.
        warmup = float((data.get("probes") or {}).get("warmup_s", 2.0))
        overrides["probes.warmup_s"] = min(warmup, 0.25 * float(overrides["duration_s"]))
    data = _apply_overrides(data, overrides)
    try:
        config = SimulationConfig.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_validation(path, exc)) from None
    return _resolve_data_paths(config, path)


#: Data shipped with the project (video1 manifest, a few FCC traces).
PACKAGED_DATA = Path(__file__).resolve().parents[1] / "emulation" / "video" / "data"


def _find_data(value: str, scenario: Path, key: str) -> str:
    """Absolute path of a data file named in a scenario: as given, beside the scenario, or shipped."""
    for candidate in (Path(value), scenario.parent / value, PACKAGED_DATA / value):
        if candidate.exists():
            return str(candidate.resolve())
    raise ScenarioError(f"{scenario}: {key}: '{value}' not found (looked beside the scenario and in {PACKAGED_DATA})")


def _resolve_data_paths(config: SimulationConfig, scenario: Path) -> SimulationConfig:
    bottleneck = config.bottleneck
    if bottleneck.trace:
        bottleneck = bottleneck.model_copy(update={"trace": _find_data(bottleneck.trace, scenario, "bottleneck.trace")})
    video = [
        v.model_copy(update={"manifest": _find_data(v.manifest, scenario, f"video.{i}.manifest")}) if v.manifest else v
        for i, v in enumerate(config.video)
    ]
    return config.model_copy(update={"bottleneck": bottleneck, "video": video})
