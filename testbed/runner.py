"""Run one scenario in its own simulation process, with its agent processes, and record the outcome.

The run directory is claimed first (one writer: ``testbed.ownership``), then
gets the resolved config and a ``status.json`` that says running / ok /
failed (with the error), so an interrupted or failed run is never mistaken
for a finished one. The children run in sessions of their own and die with
the testbed (``testbed.lifecycle``); whatever ends a run (its end, a failure,
a timeout, Ctrl-C, SIGTERM, an agent's death) the simulation is asked to stop
first, so it writes the tables it has, then the agents get their final state,
and nothing is left running. That cleanup is not cut short by a second signal.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from emulation.config import AbrControlConfig, AqmControlConfig, SimulationConfig
from emulation.rundir import read_json, write_json, write_yaml
from testbed import lifecycle
from testbed.ownership import INTERRUPTED, claim, write_status

DEFAULT_RUNS_DIR = Path("runs")
#: Time the simulation gets to stop by itself and write its tables before it is killed.
SIM_STOP_GRACE_S = 20.0
#: Time agents get to write their decisions after the simulation ended.
AGENT_STOP_GRACE_S = 10.0
#: The loopback address every agent the runner starts binds to.
LOOPBACK = "127.0.0.1"


@dataclass
class AgentSpec:
    """An agent process answering one control point of the run."""

    control: str  # "aqm" or "abr"
    policy: str
    control_point: str
    port: int
    shadows: tuple[str, ...] = ()
    host: str = LOOPBACK
    #: keyword arguments of the acting policy (``--policy-arg KEY=VALUE``)
    policy_args: tuple[tuple[str, str], ...] = ()
    #: longest wait for the simulation's first message (covers the simulation's start-up)
    connect_timeout_s: float = 120.0
    #: listen on this Unix socket (ipc://) instead of host:port
    ipc: str | None = None


@dataclass
class ServerSpec:
    """The policy server of the run (``python -m agents server``): one model per control kind for every
    control point whose acting policy is ``serves[control]``."""

    serves: dict[str, str]
    port: int
    streams: int
    shadows: tuple[str, ...] = ()
    policy_args: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    host: str = LOOPBACK
    connect_timeout_s: float = 120.0
    control_point: str = "policy-server"

    @property
    def policy(self) -> str:
        return "+".join(f"{c}={p}" for c, p in sorted(self.serves.items()))


#: Acting policies a run serves from one policy server by default (one model shared by its control points).
SERVED_POLICIES = ("llm",)


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


def local_ipc_name() -> str | None:
    """A fresh Unix socket name for an agent the runner starts beside the simulation: Linux's abstract
    namespace (no file to clean up, gone with the socket); None elsewhere, where agents keep TCP."""
    return f"@l4s-testbed-{os.getpid()}-{secrets.token_hex(6)}" if sys.platform == "linux" else None


@dataclass(frozen=True)
class ExternalAgent:
    """An agent the runner does not start (``--aqm tcp://HOST:PORT`` or ``ipc://NAME``): where the simulation
    finds it."""

    host: str
    port: int
    ipc: str | None = None


def parse_agent(text: str | None, option: str) -> str | ExternalAgent | None:
    """A policy name, or ``tcp://HOST:PORT`` (IPv6 hosts in brackets) or ``ipc://NAME`` for an agent started
    elsewhere."""
    if text is not None and text.startswith("ipc://"):
        if text == "ipc://":
            raise ValueError(f"{option} {text}: expected ipc://NAME (a Unix socket path, or @NAME)")
        return ExternalAgent(LOOPBACK, 5555, text.removeprefix("ipc://"))
    if text is None or not text.startswith("tcp://"):
        return text
    host, sep, port = text.removeprefix("tcp://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{option} {text}: expected tcp://HOST:PORT with a port in 1..65535")
    return ExternalAgent(host, int(port))


def _control(cls: type, current, option: str, **update):
    """``current`` (or the defaults) with ``update``, validated: the runner's settings get the schema's checks."""
    data = {**(current.model_dump() if current is not None else {}), **update}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))} {e['msg'].lower()} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ValueError(f"{option}: {problems}") from None


def with_agents(config: SimulationConfig, aqm: str | ExternalAgent | None, abr: str | ExternalAgent | None,
                shadows: tuple[str, ...] = (), timeout_s: float = 30.0, aqm_args: dict | None = None,
                abr_args: dict | None = None,
                connect_timeout_s: float = 120.0,
                policy_server: str | ExternalAgent | None = "auto") -> tuple[SimulationConfig, list]:
    """Turn on the wire control points for the chosen agents; return the config and the agents to start.

    ``aqm``/``abr`` name a policy (the runner starts its agent, bound to 127.0.0.1 whatever host the
    scenario names), an :class:`ExternalAgent` (started by someone else), or None: then only a control
    point the scenario marks ``external: true`` stays on (with these timeouts), and otherwise the queue
    runs its own PI2 and each video client its configured ABR.

    Control points whose acting policy is an LLM (:data:`SERVED_POLICIES`) share one policy server:
    ``policy_server="auto"`` starts one for the run (a :class:`ServerSpec` among the agents), an
    :class:`ExternalAgent` points them at a server already running (shared by a sweep), ``None``
    gives every control point its own agent process as for classic policies.
    """
    from agents.registry import policy_names

    agents: list[AgentSpec] = []
    control = config.control.model_copy()
    timeouts = {"timeout_s": timeout_s, "connect_timeout_s": connect_timeout_s}
    started = {c for c, name in (("aqm", aqm), ("abr", abr)) if isinstance(name, str)}
    unknown = [s for s in shadows if not any(s in policy_names(c) for c in started)]
    if unknown:
        raise ValueError(f"shadow policy {', '.join(unknown)} fits none of the agents the testbed starts "
                         f"({', '.join(sorted(started)) or 'none'})")

    def shadows_for(control_name: str) -> tuple[str, ...]:
        return tuple(s for s in shadows if s in policy_names(control_name))

    def endpoint(cls: type, current, choice, option: str, port: int | None, ipc: str | None):
        if isinstance(choice, ExternalAgent):
            return _control(cls, current, option, host=choice.host, port=choice.port, ipc=choice.ipc,
                            external=True, **timeouts)
        if isinstance(choice, str):
            where = {"ipc": ipc} if ipc else {"port": port, "ipc": None}
            return _control(cls, current, option, host=LOOPBACK, external=False, **where, **timeouts)
        if current is not None and current.external:
            return _control(cls, current, option, **timeouts)
        return None

    clients = config.all_video()
    if abr is not None and not clients:
        raise ValueError(f"scenario '{config.name}' has no video clients for an ABR agent")
    served = {c: name for c, name in (("aqm", aqm), ("abr", abr)) if isinstance(name, str) and name in SERVED_POLICIES}
    if policy_server is None or policy_server == "none":
        served = {}
    elif not isinstance(policy_server, ExternalAgent) and policy_server != "auto":
        raise ValueError(f"--policy-server: expected auto, none or tcp://HOST:PORT, got {policy_server!r}")
    server_port = free_port() if served and policy_server == "auto" else None
    via = policy_server if isinstance(policy_server, ExternalAgent) else None

    def served_endpoint(cls: type, current, option: str, **extra):
        if via is not None:
            return _control(cls, current, option, host=via.host, port=via.port, ipc=via.ipc, external=True, **timeouts,
                            **extra)
        return _control(cls, current, option, host=LOOPBACK, port=server_port, ipc=None, external=False, **timeouts,
                        **extra)

    # Agents the runner starts sit beside the simulation: a Unix socket where the system has one, else TCP.
    if "aqm" in served:
        control.aqm = served_endpoint(AqmControlConfig, control.aqm, "--aqm")
    else:
        aqm_ipc = local_ipc_name() if isinstance(aqm, str) else None
        aqm_port = free_port() if isinstance(aqm, str) and aqm_ipc is None else None
        control.aqm = endpoint(AqmControlConfig, control.aqm, aqm, "--aqm", aqm_port, aqm_ipc)
        if isinstance(aqm, str):
            agents.append(AgentSpec("aqm", aqm, "aqm", aqm_port or 0, shadows_for("aqm"), LOOPBACK,
                                    tuple((aqm_args or {}).items()), connect_timeout_s, aqm_ipc))
    if "abr" in served:  # every client at the server's one endpoint, told apart by its connection's identity
        control.abr = served_endpoint(AbrControlConfig, control.abr, "--abr", one_endpoint=True)
    else:
        # Client i talks to port + i (or ipc <name>-i): over TCP the runner reserves a block from a free port.
        abr_ipc = local_ipc_name() if isinstance(abr, str) else None
        base = _free_block(len(clients)) if isinstance(abr, str) and abr_ipc is None else None
        control.abr = endpoint(AbrControlConfig, control.abr, abr, "--abr", base, abr_ipc)
        if isinstance(abr, str):
            agents += [AgentSpec("abr", abr, f"abr-{c.name}", 0 if base is None else base + i, shadows_for("abr"),
                                 LOOPBACK, tuple((abr_args or {}).items()), connect_timeout_s,
                                 f"{abr_ipc}-{i}" if abr_ipc else None) for i, c in enumerate(clients)]
    if server_port is not None:
        streams = int("aqm" in served) + (len(clients) if "abr" in served else 0)
        args = {"aqm": tuple((aqm_args or {}).items()), "abr": tuple((abr_args or {}).items())}
        agents.append(ServerSpec(served, server_port, streams,
                                 tuple(sorted({s for c in served for s in shadows_for(c)})),
                                 {c: args[c] for c in served}, LOOPBACK, connect_timeout_s))
    return config.model_copy(update={"control": control}), agents


def with_decision_delays(config: SimulationConfig, delays: dict[str, str | float]) -> SimulationConfig:
    """``config`` with ``control.<point>.decision_delay`` set for each point of ``delays`` (``aqm``, ``abr``).

    Each point must be on the wire already (:func:`with_agents`): a delay is the time its agent takes.
    """
    data = config.model_dump()
    for point, delay in delays.items():
        given = f"--decision-delay {point}={delay:g}" if isinstance(delay, float) else f"--decision-delay {point}={delay}"
        if point not in ("aqm", "abr"):
            raise ValueError(f"{given}: the control points are aqm and abr")
        if data["control"][point] is None:
            raise ValueError(f"{given}: this run has no {point} agent (choose one with --{point})")
        data["control"][point]["decision_delay"] = delay
    try:
        return SimulationConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"--decision-delay: {'; '.join(e['msg'] for e in exc.errors())}") from None


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
    """The run directory's policy part: ``<aqm>-agent`` or the queue type, then the ABR, then shadows."""
    by_control = {}
    for a in agents or []:
        by_control.update(a.serves if isinstance(a, ServerSpec) else {a.control: a.policy})
    for name, point in (("aqm", config.control.aqm), ("abr", config.control.abr)):
        if name not in by_control and point is not None and point.external:
            by_control[name] = "external"
    parts = [f"{by_control['aqm']}-agent" if "aqm" in by_control else config.bottleneck.queue.type]
    if config.video:
        parts.append(by_control.get("abr") or "+".join(sorted({v.abr for v in config.all_video()})))
    label = "+".join(parts) + ("+real" if config.real_mode else "")
    shadows = sorted({s for a in agents or [] for s in a.shadows})
    return label + (f"+shadow-{'-'.join(shadows)}" if shadows else "")


def default_run_dir(config: SimulationConfig, runs_dir: Path = DEFAULT_RUNS_DIR,
                    agents: list[AgentSpec] | None = None) -> Path:
    run_dir = Path(runs_dir) / config.name / policy_label(config, agents) / str(config.seed)
    check_under(run_dir, runs_dir)
    return run_dir


def check_under(path: Path, root: Path) -> None:
    """Refuse a path that resolves outside ``root`` (names are checked, links are not)."""
    if not Path(path).resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"{path} resolves outside {root}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _start_agent(spec: AgentSpec | ServerSpec, run_dir: Path, timeout_s: float,
                 pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    if isinstance(spec, ServerSpec):
        return _start_server(spec, run_dir, pass_fds)
    out = run_dir / "agents" / spec.control_point
    out.mkdir(parents=True, exist_ok=True)
    where = ["--ipc", spec.ipc] if spec.ipc else ["--port", str(spec.port), "--host", spec.host]
    cmd = [sys.executable, "-m", "agents", "serve", "--control", spec.control, "--policy", spec.policy, *where,
           "--out", str(out), "--timeout", str(timeout_s), "--connect-timeout", str(spec.connect_timeout_s),
           "--control-point", spec.control_point]
    for shadow in spec.shadows:
        cmd += ["--shadow", shadow]
    for key, value in spec.policy_args:
        cmd += ["--policy-arg", f"{key}={value}"]
    return lifecycle.spawn(cmd, run_dir / f"agent-{spec.control_point}.log", pass_fds)


def _start_server(spec: ServerSpec, run_dir: Path, pass_fds: tuple[int, ...]) -> subprocess.Popen:
    """The run's policy server: it writes each control point's decisions into this run directory itself."""
    cmd = [sys.executable, "-m", "agents", "server", "--port", str(spec.port), "--host", spec.host,
           "--streams", str(spec.streams), "--out", str(run_dir / "agents")]
    for control, policy in spec.serves.items():
        cmd += [f"--{control}", policy]
        for key, value in spec.policy_args.get(control, ()):
            cmd += [f"--{control}-arg", f"{key}={value}"]
    for shadow in spec.shadows:
        cmd += ["--shadow", shadow]
    return lifecycle.spawn(cmd, run_dir / f"agent-{spec.control_point}.log", pass_fds)


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


def _agent_error(spec: AgentSpec, rc: int, run_dir: Path, what: str) -> str:
    return (f"agent for {spec.control_point} ({spec.policy}) {what} {lifecycle.describe_exit(rc)}: "
            f"{_tail(run_dir / f'agent-{spec.control_point}.log', 3)}")


def _supervise(sim: subprocess.Popen, agent_procs: list, timeout_s: float,
               run_dir: Path) -> tuple[int | None, str | None]:
    """Wait for the simulation; an agent that dies first stops it (it writes its tables before it exits).

    The simulation keeps its own wall-clock limit of ``timeout_s``; past it (and a grace to write its
    tables) the runner kills it. Returns its exit code and the runner's own error, if any.
    """
    deadline = time.monotonic() + timeout_s + SIM_STOP_GRACE_S
    while True:
        try:
            return sim.wait(timeout=0.2), None
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            lifecycle.stop_group(sim, SIM_STOP_GRACE_S)
            return None, f"simulation timed out after {timeout_s:.0f} s and did not stop (see {run_dir / 'sim.log'})"
        for spec, agent in agent_procs:
            rc = agent.poll()
            if rc not in (None, 0):
                lifecycle.stop_group(sim, SIM_STOP_GRACE_S)
                return None, _agent_error(spec, rc, run_dir, "died:")


def _stop_agents(agent_procs: list, run_dir: Path, grace_s: float = AGENT_STOP_GRACE_S) -> list[str]:
    """Let agents finish writing their decisions, then make sure none is left running."""
    errors = []
    deadline = time.monotonic() + grace_s
    for spec, proc in agent_procs:
        try:
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        if rc not in (0, None):
            errors.append(_agent_error(spec, rc, run_dir, "exited:"))
        lifecycle.stop_group(proc, 3.0)  # also whatever it left in its group
    return errors


def _remove_temp_files(run_dir: Path) -> None:
    """Half-written files of processes that were killed (``.<name>.<pid>.tmp`` / ``.partial``): never results."""
    for pattern in (".*.tmp", ".*.partial"):
        for path in run_dir.rglob(pattern):
            path.unlink(missing_ok=True)


def _sim_error(rc: int | None, run_dir: Path) -> str | None:
    """Why the simulation process failed: its own account (sim-error.json), else how it died and its log."""
    if rc in (0, None):
        return None
    err_file = run_dir / "sim-error.json"
    if err_file.exists():
        try:
            return read_json(err_file)["error"]
        except (OSError, ValueError, KeyError):
            pass
    return f"simulation process {lifecycle.describe_exit(rc)}; sim.log ends with:\n{_tail(run_dir / 'sim.log')}"


def run_config(config: SimulationConfig, run_dir: Path, timeout_s: float | None = None,
               agents: list[AgentSpec] | None = None, overwrite: bool = False) -> RunResult:
    """Run ``config`` in a simulation process writing into ``run_dir``, with its agent processes.

    ``run_dir`` must be absent or empty unless ``overwrite`` (which clears it); a directory another
    process writes is refused (:class:`testbed.ownership.RunDirError`). Ctrl-C and the stop signals
    (as :class:`KeyboardInterrupt`) stop the run, record it as interrupted and are raised again.
    """
    with claim(run_dir, overwrite=overwrite) as lock:
        return run_claimed(config, Path(run_dir), timeout_s, agents, lock.fd)


def run_claimed(config: SimulationConfig, run_dir: Path, timeout_s: float | None = None,
                agents: list[AgentSpec] | None = None, lock_fd: int | None = None) -> RunResult:
    """:func:`run_config` in a directory this process has claimed (``lock_fd`` goes to the children)."""
    write_yaml(run_dir / "config.yaml", config.model_dump(mode="json"))
    started = time.time()
    write_status(run_dir, "running", started=started, pid=os.getpid(), host=socket.gethostname())
    if timeout_s is None:
        timeout_s = 120.0 + 20.0 * config.duration_s
    cmd = [sys.executable, "-m", "testbed.simproc", "--config", str(run_dir / "config.yaml"), "--out", str(run_dir),
           "--wall-limit", str(timeout_s)]
    agent_timeout_s = max((c.timeout_s for c in (config.control.aqm, config.control.abr) if c), default=30.0)
    agent_procs: list = []
    sim: subprocess.Popen | None = None
    rc, error, interrupted = None, None, None
    inherit = (lock_fd,) if lock_fd is not None else ()  # the directory stays claimed until the children exit
    try:
        for spec in agents or []:
            agent_procs.append((spec, _start_agent(spec, run_dir, agent_timeout_s, inherit)))
        sim = lifecycle.spawn(cmd, run_dir / "sim.log", inherit)
        rc, error = _supervise(sim, agent_procs, timeout_s, run_dir)
    except KeyboardInterrupt as exc:
        interrupted = exc
    except Exception as exc:  # a run must end recorded, whatever broke in the runner
        error = f"{type(exc).__name__}: {exc}"
    finally:
        with lifecycle.uninterruptible():
            if sim is not None and sim.poll() is None:
                rc = lifecycle.stop_group(sim, SIM_STOP_GRACE_S)  # it writes the tables it has
            agent_errors = _stop_agents(agent_procs, run_dir)
            _remove_temp_files(run_dir)
            wall_s = time.time() - started
            if interrupted is not None:
                write_status(run_dir, "failed", error=INTERRUPTED, signal=lifecycle.signal_name(interrupted),
                             started=started, wall_s=wall_s)
    if interrupted is not None:
        raise interrupted
    error = error or _sim_error(rc, run_dir) or ("; ".join(agent_errors) if agent_errors else None)
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else None
    if summary is not None and agents:
        summary["agents"] = agent_summary(run_dir)
        write_json(summary_path, summary)
    state = "ok" if error is None else "failed"
    write_status(run_dir, state, error=error, started=started, wall_s=wall_s)
    return RunResult(run_dir=run_dir, status=state, summary=summary, error=error, wall_s=wall_s)
