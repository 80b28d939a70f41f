"""``python -m agents serve ...``: an agent process for one control point.

Only argument parsing lives here; the loop is :func:`agents.serve.serve`.
Exit status 0 after the requested episodes, 1 with a one-line error otherwise.
"""

from __future__ import annotations

import os

# Before torch loads: its OpenMP threads spin while they wait for work by default, and beside a
# simulation on the same cores that spinning made decisions ~10x slower (benchmarks/bench_levers.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One torch thread unless told otherwise: an agent shares the machine with the simulation it answers,
# and a second thread fighting it made the shipped AQM policy's decisions slower (p50 4.4 vs 2.9 ms,
# p99 14 vs 5.6 ms). A server with cores of its own: OMP_NUM_THREADS=N.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from agents.env import OpenGymEnv  # noqa: E402
from agents.policy import CONTROLS  # noqa: E402
from agents.registry import make_policy, policy_names  # noqa: E402
from agents.serve import serve  # noqa: E402

_log = logging.getLogger("agents")


def _policy_arg(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value read as JSON when it parses (numbers, true/false) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (a number > 0), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agents", description="Agent processes for the testbed.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve", help="answer a simulation's control point over the ns3-gym protocol")
    p.add_argument("--control", required=True, choices=CONTROLS, help="kind of control point")
    p.add_argument("--policy", required=True, help="acting policy name (see agents.registry)")
    p.add_argument("--shadow", action="append", default=[], metavar="NAME",
                   help="shadow policy whose would-be actions are logged (repeatable)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="TCP port to bind (0 picks a free one)")
    where.add_argument("--ipc", metavar="NAME", help="listen on ipc://NAME, a Unix socket, instead of a TCP port "
                       "(a simulation on this machine; @NAME: Linux's abstract namespace, no file)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other is reachable from other hosts: a warning says so)")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory for decisions.parquet")
    p.add_argument("--timeout", type=_seconds, default=30.0, metavar="S",
                   help="seconds to wait for each message during an episode (default 30)")
    p.add_argument("--connect-timeout", type=_seconds, default=120.0, metavar="S",
                   help="seconds to wait for a simulation to connect (default 120: covers its start-up)")
    p.add_argument("--episodes", type=int, default=1, help="simulations to serve, one after another")
    p.add_argument("--control-point", default=None, metavar="NAME",
                   help="control point name for the log (default: the control kind)")
    p.add_argument("--policy-arg", action="append", default=[], type=_policy_arg, metavar="KEY=VALUE",
                   help="keyword argument for --policy, acting or (with --mode shadow) shadowing (repeatable)")
    p.add_argument("--mode", choices=("replace", "shadow"), default="replace",
                   help="replace: --policy acts; shadow: --behind acts and --policy shadows it")
    p.add_argument("--behind", default=None, metavar="NAME",
                   help="with --mode shadow, the classic policy that acts (e.g. pi2, mpc)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")

    s = commands.add_parser("server", help="one process, one model per control kind, any number of control points "
                            "(of one run or of many), LLM decisions batched")
    s.add_argument("--aqm", default=None, metavar="NAME", help="acting policy of AQM control points (e.g. llm)")
    s.add_argument("--abr", default=None, metavar="NAME", help="acting policy of ABR control points (e.g. llm)")
    s.add_argument("--shadow", action="append", default=[], metavar="NAME",
                   help="shadow policy, for the control kinds it fits (repeatable)")
    s.add_argument("--aqm-arg", action="append", default=[], type=_policy_arg, metavar="KEY=VALUE",
                   help="keyword argument of the AQM policy (e.g. checkpoint=DIR)")
    s.add_argument("--abr-arg", action="append", default=[], type=_policy_arg, metavar="KEY=VALUE",
                   help="keyword argument of the ABR policy (e.g. checkpoint=DIR)")
    s.add_argument("--port", type=int, default=5555, help="TCP port to bind (0 picks a free one; default 5555)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--out", default=None, metavar="DIR",
                   help="decision logs of peers whose run directory is not reachable from here")
    s.add_argument("--max-batch", type=int, default=16, help="most streams in one forward pass (default 16)")
    s.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="longest wait for more decisions to batch with the first (default 2 ms)")
    s.add_argument("--streams", type=int, default=None,
                   help="stop after this many episodes have ended (default: serve until stopped)")
    s.add_argument("--idle-timeout", type=_seconds, default=None, metavar="S",
                   help="stop after this long without a message (default: never)")
    s.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _server(args: argparse.Namespace) -> int:
    from agents.server import PolicyServer

    policies = {}
    for control, name, kwargs in (("aqm", args.aqm, dict(args.aqm_arg)), ("abr", args.abr, dict(args.abr_arg))):
        if name is None:
            continue
        base = make_policy(control, name, **kwargs)  # loaded once: LLM streams fork it, sharing the model
        shadow_names = [n for n in args.shadow if n in policy_names(control)]

        def make(control=control, name=name, kwargs=kwargs, base=base, shadow_names=shadow_names):
            acting = base.fork() if hasattr(base, "fork") else make_policy(control, name, **kwargs)
            return acting, [make_policy(control, n) for n in shadow_names]

        policies[control] = make
    unused = [n for n in args.shadow if not any(n in policy_names(c) for c in policies)]
    if unused:
        raise ValueError(f"shadow policy {', '.join(unused)} fits none of the served control kinds")
    server = PolicyServer(policies, host=args.host, port=args.port, out=args.out, max_batch=args.max_batch,
                          max_wait_ms=args.max_wait_ms, streams=args.streams)
    _log.info("policy server on %s: %s", server.endpoint,
              ", ".join(f"{c} {n}" for c, n in (("aqm", args.aqm), ("abr", args.abr)) if n))
    server.run(args.idle_timeout)
    sizes = server.batches
    _log.info("done: %d decisions, %d streams; LLM batches: %d, mean size %.2f", server.decisions, server.finished,
              len(sizes), sum(sizes) / len(sizes) if sizes else 0.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "server":
        try:
            return _server(args)
        except Exception as exc:
            _log.debug("server failed", exc_info=True)
            _log.error("%s: %s", type(exc).__name__, " | ".join(ln for ln in str(exc).splitlines() if ln.strip()))
            return 1
    env: OpenGymEnv | None = None
    try:
        main_policy = make_policy(args.control, args.policy, **dict(args.policy_arg))
        shadows = [make_policy(args.control, name) for name in args.shadow]
        if args.mode == "shadow":
            if not args.behind:
                raise ValueError("--mode shadow needs --behind NAME, the classic policy that acts")
            policy, shadows = make_policy(args.control, args.behind), [main_policy, *shadows]
        elif args.behind:
            raise ValueError("--behind only makes sense with --mode shadow")
        else:
            policy = main_policy
        env = OpenGymEnv(port=args.port or 0, host=args.host, timeout_s=args.timeout,
                         connect_timeout_s=args.connect_timeout, ipc=args.ipc)
        _log.info("serving %s policy %s%s on %s", args.control, policy.name,
                  "".join(f" (shadow {s.name})" for s in shadows), env.endpoint)
        result = serve(env, policy, shadows=shadows, out_dir=args.out, episodes=args.episodes,
                       control_point=args.control_point)
    except Exception as exc:
        _log.debug("serve failed", exc_info=True)
        message = " | ".join(line for line in str(exc).splitlines() if line.strip())
        _log.error("%s: %s", type(exc).__name__, message)
        return 1
    finally:
        if env is not None:
            env.close()
    _log.info("done: %d episode(s), %d decisions%s", result.episodes, result.decisions,
              f", log {result.decisions_path}" if result.decisions_path else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
