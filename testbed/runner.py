"""Run one scenario in its own simulation process and record the outcome.

The run directory gets the resolved config first and a ``status.json`` that
says running / ok / failed (with the error), so an interrupted or failed run
is never mistaken for a finished one. The simulation runs in a new process
group that is killed on timeout or Ctrl-C: no orphans.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from emulation.config import SimulationConfig
from emulation.rundir import read_json, write_json, write_yaml

DEFAULT_RUNS_DIR = Path("runs")


class RunFailed(RuntimeError):
    """The simulation process failed; the message carries its error."""


@dataclass
class AgentSpec:
    """An agent process answering one control point of the run."""

    control: str  # "aqm" or "abr"
    policy: str
    control_point: str
    port: int
    shadows: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    #: keyword arguments of the acting policy (``--policy-arg KEY=VALUE``)
    policy_args: tuple[tuple[str, str], ...] = ()


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict | None
    error: str | None
    wall_s: float


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def with_agents(config: SimulationConfig, aqm: str | None, abr: str | None, shadows: tuple[str, ...] = (),
                timeout_s: float = 30.0, aqm_args: dict | None = None,
                abr_args: dict | None = None) -> tuple[SimulationConfig, list[AgentSpec]]:
    """Turn on the wire control points for the chosen policies; return the config and the agents to start."""
    from agents.registry import policy_names
    from emulation.config import AbrControlConfig, AqmControlConfig

    agents: list[AgentSpec] = []
    control = config.control.model_copy()
    chosen = {c for c, name in (("aqm", aqm), ("abr", abr)) if name}
    unknown = [s for s in shadows if not any(s in policy_names(c) for c in chosen)]
    if unknown:
        raise ValueError(f"shadow policy {', '.join(unknown)} fits none of the agents' controls ({', '.join(sorted(chosen))})")

    def shadows_for(control_name: str) -> tuple[str, ...]:
        return tuple(s for s in shadows if s in policy_names(control_name))

    if aqm:
        port = free_port()
        control.aqm = (control.aqm or AqmControlConfig()).model_copy(update={"port": port, "timeout_s": timeout_s})
        agents.append(AgentSpec("aqm", aqm, "aqm", port, shadows_for("aqm"),
                                policy_args=tuple((aqm_args or {}).items())))
    if abr:
        clients = config.all_video()
        if not clients:
            raise ValueError(f"scenario '{config.name}' has no video clients for an ABR agent")
        # Client i talks to port + i: reserve a contiguous block starting at a free port.
        base = _free_block(len(clients))
        control.abr = (control.abr or AbrControlConfig()).model_copy(update={"port": base, "timeout_s": timeout_s})
        agents += [AgentSpec("abr", abr, f"abr-{c.name}", base + i, shadows_for("abr"),
                             policy_args=tuple((abr_args or {}).items())) for i, c in enumerate(clients)]
    return config.model_copy(update={"control": control}), agents


def _free_block(n: int) -> int:
    for _ in range(50):
        base = free_port()
        try:
            socks = []
            for i in range(n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no block of {n} free ports found on 127.0.0.1")


def policy_label(config: SimulationConfig, agents: list[AgentSpec] | None = None) -> str:
    by_control = {a.control: a.policy for a in agents or []}
    parts = [f"{by_control['aqm']}-agent" if "aqm" in by_control else config.bottleneck.queue.type]
    if config.video:
        parts.append(by_control.get("abr") or "+".join(sorted({v.abr for v in config.all_video()})))
    label = "+".join(parts) + ("+real" if config.real_mode else "")
    shadows = sorted({s for a in agents or [] for s in a.shadows})
    return label + (f"+shadow-{'-'.join(shadows)}" if shadows else "")


def default_run_dir(config: SimulationConfig, runs_dir: Path = DEFAULT_RUNS_DIR,
                    agents: list[AgentSpec] | None = None) -> Path:
    return Path(runs_dir) / config.name / policy_label(config, agents) / str(config.seed)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _start_agent(spec: AgentSpec, run_dir: Path, timeout_s: float) -> subprocess.Popen:
    out = run_dir / "agents" / spec.control_point
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agents", "serve", "--control", spec.control, "--policy", spec.policy,
           "--port", str(spec.port), "--host", spec.host, "--out", str(out), "--timeout", str(timeout_s),
           "--control-point", spec.control_point]
    for shadow in spec.shadows:
        cmd += ["--shadow", shadow]
    for key, value in spec.policy_args:
        cmd += ["--policy-arg", f"{key}={value}"]
    log_file = open(run_dir / f"agent-{spec.control_point}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    log_file.close()
    return proc


def agent_summary(run_dir: Path) -> dict:
    """Per control point and policy: decision latency p50/p99 (ms), fallback rate, agreement with the actor."""
    import numpy as np
    import pandas as pd

    out: dict = {}
    for path in sorted((Path(run_dir) / "agents").glob("*/decisions.parquet")):
        table = pd.read_parquet(path)
        table = table[~table["done"]]
        acting = table[table["role"] == "acting"].set_index("step")["action"]
        point = {}
        for (policy, role), rows in table.groupby(["policy", "role"]):
            ms = rows["decision_ms"].to_numpy(dtype=float)
            entry = {
                "role": role,
                "decisions": int(len(rows)),
                "decision_ms_p50": float(np.percentile(ms, 50)) if len(ms) else None,
                "decision_ms_p99": float(np.percentile(ms, 99)) if len(ms) else None,
                "fallback_rate": float(rows["fallback"].mean()) if len(rows) else None,
            }
            if role == "shadow" and len(rows):
                pairs = [(np.asarray(a, float), np.asarray(acting.get(step, [np.nan]), float))
                         for step, a in zip(rows["step"], rows["action"], strict=True)]
                entry["agreement"] = float(np.mean([np.allclose(a, b) for a, b in pairs]))
                entry["mean_abs_action_diff"] = float(np.mean([np.abs(a - b).mean() for a, b in pairs]))
            point[policy] = entry
        out[path.parent.name] = point
    return out


def _supervise(proc: subprocess.Popen, agent_procs: list, timeout_s: float, run_dir: Path) -> tuple:
    """Wait for the simulation; an agent that dies first ends the run at once with its error."""
    deadline = time.time() + timeout_s
    while True:
        try:
            return proc.wait(timeout=0.2), None
        except subprocess.TimeoutExpired:
            if time.time() > deadline:
                raise
        for spec, agent in agent_procs:
            rc = agent.poll()
            if rc not in (None, 0):
                _kill_group(proc)
                return None, (f"agent for {spec.control_point} ({spec.policy}) died with code {rc}: "
                              f"{_tail(run_dir / f'agent-{spec.control_point}.log', 3)}")


def _stop_agents(agent_procs: list, run_dir: Path, grace_s: float = 10.0) -> list[str]:
    """Let agents finish writing their decisions, then make sure none is left running."""
    errors = []
    deadline = time.time() + grace_s
    for spec, proc in agent_procs:
        try:
            rc = proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = None
        if rc not in (0, None):
            errors.append(f"agent for {spec.control_point} ({spec.policy}) exited with code {rc}: "
                          f"{_tail(run_dir / f'agent-{spec.control_point}.log', 3)}")
        else:
            _kill_group(proc)
    return errors


def run_config(config: SimulationConfig, run_dir: Path, timeout_s: float | None = None,
               agents: list[AgentSpec] | None = None) -> RunResult:
    """Run ``config`` in a simulation process writing into ``run_dir``, with its agent processes."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / "config.yaml", config.model_dump(mode="json"))
    started = time.time()
    write_json(run_dir / "status.json", {"state": "running", "started": started, "pid": os.getpid()})
    if timeout_s is None:
        timeout_s = 120.0 + 20.0 * config.duration_s
    cmd = [sys.executable, "-m", "testbed.simproc", "--config", str(run_dir / "config.yaml"), "--out", str(run_dir)]
    error = None
    agent_timeout_s = max((c.timeout_s for c in (config.control.aqm, config.control.abr) if c), default=30.0)
    agent_procs = [(spec, _start_agent(spec, run_dir, agent_timeout_s)) for spec in agents or []]
    try:
        with open(run_dir / "sim.log", "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc, error = _supervise(proc, agent_procs, timeout_s, run_dir)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc, error = None, f"simulation timed out after {timeout_s:.0f} s (see {run_dir / 'sim.log'})"
            except BaseException:
                _kill_group(proc)
                write_json(run_dir / "status.json", {"state": "failed", "error": "interrupted", "started": started})
                raise
    finally:
        agent_errors = _stop_agents(agent_procs, run_dir)
    wall_s = time.time() - started
    if rc not in (0, None) and error is None:
        err_file = run_dir / "sim-error.json"
        if err_file.exists():
            error = read_json(err_file)["error"]
        else:
            error = f"simulation process exited with code {rc}:\n{_tail(run_dir / 'sim.log')}"
    if error is None and agent_errors:
        error = "; ".join(agent_errors)
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else None
    if summary is not None and agents:
        summary["agents"] = agent_summary(run_dir)
        write_json(summary_path, summary)
    state = "ok" if error is None else "failed"
    write_json(run_dir / "status.json", {"state": state, "error": error, "started": started, "wall_s": wall_s})
    return RunResult(run_dir=run_dir, status=state, summary=summary, error=error, wall_s=wall_s)
