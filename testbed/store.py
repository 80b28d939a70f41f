"""The results store: one run directory per grid cell, and what state each is in.

The store is the run directories themselves (``<out>/<scenario>/<policy>/<param-tag>/<seed>/``,
written by ``testbed.runner``) plus ``runspec.json``, the grid cell that produced
the run. ``status.json`` decides what a resumed grid does: ``ok`` runs are kept,
failed runs are kept with their error and re-run only when asked, and runs that
never finished (killed, interrupted) run again. A run another process is still
writing (its directory is claimed, ``testbed.ownership``) is left alone: only a
``running`` cell whose owner is gone is reclaimed. Nothing is dropped silently:
every cell ends up ok or failed with an error, and reports show both.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from emulation.rundir import read_json, write_json
from testbed.grid import IN_QUEUE, SAMPLE_KEYS, GridError, Policy, RunSpec
from testbed.ownership import INTERRUPTED, STATUS_FILE, RunDirClaim, claim, is_claimed, read_status, write_status

SPEC_FILE = "runspec.json"


def run_state(run_dir: Path) -> str:
    """``missing``, ``busy`` (another live process writes it), ``unfinished`` (started, never finished or
    interrupted), ``ok`` or ``failed``."""
    status = read_status(run_dir)
    if status is None:
        return "busy" if is_claimed(run_dir) else "missing"
    state = status.get("state")
    if state == "ok":
        return "ok"
    if state == "failed" and status.get("error") != INTERRUPTED:
        return "failed"
    if state == "running" and is_claimed(run_dir):
        return "busy"
    return "unfinished"


@dataclass
class Plan:
    """What a (resumed) grid will do with each of its cells."""

    to_run: list[RunSpec] = field(default_factory=list)
    done: list[RunSpec] = field(default_factory=list)  # ok already: kept
    failed: list[RunSpec] = field(default_factory=list)  # failed earlier: kept with their error
    busy: list[RunSpec] = field(default_factory=list)  # being run by another process: left alone

    def describe(self, retry_failed: bool) -> str:
        total = len(self.to_run) + len(self.done) + len(self.failed) + len(self.busy)
        parts = [f"{total} runs: {len(self.to_run)} to run"]
        if self.done:
            parts.append(f"{len(self.done)} already ok (kept)")
        if self.busy:
            parts.append(f"{len(self.busy)} being run by another testbed process (left alone)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed earlier (kept; --retry-failed runs them again)")
        elif retry_failed:
            parts.append("failed runs retried")
        return ", ".join(parts)


def _check_same_cell(spec: RunSpec) -> None:
    """A run directory holding another cell's run (other duration, overrides...) must not be mistaken for this one."""
    path = spec.run_dir / SPEC_FILE
    if not path.exists():
        return
    stored = read_json(path)
    mine = json.loads(json.dumps(spec.to_json()))
    keys = [k for k in ("overrides", "seed", "policy") if stored.get(k) != mine[k]]
    if keys:
        raise GridError(f"{spec.run_dir} holds a different run ({', '.join(f'{k}: {stored.get(k)!r}' for k in keys)}"
                        f" instead of {', '.join(repr(mine[k]) for k in keys)}); use another --out")


def plan(specs: Iterable[RunSpec], retry_failed: bool = False) -> Plan:
    """Sort the grid's cells by what their run directories say."""
    result = Plan()
    for spec in specs:
        _check_same_cell(spec)
        state = run_state(spec.run_dir)
        if state == "ok":
            result.done.append(spec)
        elif state == "busy":
            result.busy.append(spec)
        elif state == "failed" and not retry_failed:
            result.failed.append(spec)
        else:
            result.to_run.append(spec)
    return result


def prepare(spec: RunSpec) -> RunDirClaim:
    """Claim a cell's directory (refused with RunDirBusy while another process runs it) and empty it, so no
    file of an earlier attempt is read as this run's; record the cell and which host and process ran it (on
    a cluster, where to look for its logs)."""
    lock = claim(spec.run_dir, overwrite=True)
    write_json(spec.run_dir / SPEC_FILE, {**spec.to_json(), "host": socket.gethostname(), "pid": os.getpid()})
    return lock


def record_failure(spec: RunSpec, error: str) -> None:
    """A claimed cell that failed before its simulation could start (bad config on the worker, no free port...)."""
    write_status(spec.run_dir, "failed", error=error)


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories in ``paths``: each path itself if it holds a status.json, else every one below it."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run directory")
        if (path / STATUS_FILE).is_file():
            found.add(path.resolve())
        else:
            found.update(p.parent.resolve() for p in path.rglob(STATUS_FILE))
    return sorted(found)


@dataclass
class StoredRun:
    """One run as a report sees it."""

    run_dir: Path
    scenario: str
    policy: str
    params: dict
    seed: int | None
    state: str
    error: str | None
    summary: dict | None

    @property
    def condition(self) -> dict:
        """The swept parameters that define the condition (sample keys such as traces excluded)."""
        return {k: v for k, v in self.params.items() if k not in SAMPLE_KEYS}


def _policy_from_run(run_dir: Path, config: dict) -> str:
    """Policy string of a run made outside a grid (``testbed run``), from its config and decision logs."""
    by_control: dict[str, str] = {}
    shadows: set[str] = set()
    for path in sorted((run_dir / "agents").glob("*/decisions.parquet")):
        table = pq.read_table(path, columns=["policy", "role"])
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if "control" in meta and "acting_policy" in meta:
            by_control[meta["control"]] = meta["acting_policy"]
        frame = table.to_pandas()
        shadows.update(frame.loc[frame["role"] == "shadow", "policy"])
    control = config.get("control") or {}
    for name in ("aqm", "abr"):
        if control.get(name) and name not in by_control:
            by_control[name] = "unknown"  # the agent never wrote its log (failed run)
    policy = Policy(aqm=by_control.get("aqm"), abr=by_control.get("abr"), shadows=tuple(sorted(shadows)))
    label = policy.label
    label = label if label != IN_QUEUE else (config.get("bottleneck") or {}).get("queue", {}).get("type", IN_QUEUE)
    return label + ("+real" if (config.get("emulation") or {}).get("mode") == "real" else "")


def load_run(run_dir: Path) -> StoredRun:
    """Read what a report needs from a run directory (a grid cell or a plain ``testbed run``)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) or {"state": "missing", "error": "no status.json"}
    state = run_state(run_dir)
    error = status.get("error") if state != "ok" else None
    if state == "unfinished":
        error = error or "never finished (killed?)"
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if state == "ok" and summary_path.exists() else None
    spec_path = run_dir / SPEC_FILE
    if spec_path.exists():
        spec = RunSpec.from_json(read_json(spec_path))
        return StoredRun(run_dir, spec.scenario_name, spec.policy, spec.params, spec.seed, state, error, summary)
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    return StoredRun(run_dir, config.get("name", run_dir.name), _policy_from_run(run_dir, config), {},
                     config.get("seed"), state, error, summary)
