"""The ``testbed`` command: thin argument parsing over library functions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from emulation.config import check_decision_delay
from testbed import lifecycle
from testbed.grid import policy_server_choice
from testbed.runner import (
    DEFAULT_RUNS_DIR,
    default_run_dir,
    parse_agent,
    run_config,
    with_agents,
    with_decision_delays,
)
from testbed.scenario import ScenarioError, list_scenarios, load_scenario

if TYPE_CHECKING:  # the report's imports are only paid for by the commands that report
    from testbed.report import ReportPaths


def _fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def format_summary(summary: dict) -> str:
    """A short human-readable digest of summary.json."""
    lines = [f"scenario {summary['scenario']}  seed {summary['seed']}  queue {summary['queue_type']}"]
    for name, q in summary["queues"].items():
        if q["count"]:
            lines.append(
                f"  {name} queue sojourn: mean {_fmt(q['mean_ms'], ' ms')}  p50 {_fmt(q['p50_ms'], ' ms')}  "
                f"p99 {_fmt(q['p99_ms'], ' ms')}  p99.9 {_fmt(q['p999_ms'], ' ms')}"
            )
    for name, c in (summary.get("control") or {}).items():
        if c.get("steps"):
            delay = c.get("decision_delay", "none")
            if delay != "none":
                skipped = f", {c['ticks_skipped']} ticks skipped" if c.get("ticks_skipped") else ""
                delay = (f"{delay} (p50 {_fmt(c.get('decision_delay_ms_p50'), ' ms', 3)}{skipped})" if delay == "measured"
                         else f"{delay:g} ms{skipped}")
            lines.append(f"  control point {name:<10} {c['steps']} steps, round trip p50 {_fmt(c['round_trip_p50_us'], ' us', 0)}"
                         f" p99 {_fmt(c['round_trip_p99_us'], ' us', 0)}, decision delay {delay}")
    for point, policies in (summary.get("agents") or {}).items():
        for name, a in policies.items():
            extra = f"  agreement {a['agreement']:.2f}" if a.get("agreement") is not None else ""
            lines.append(
                f"  agent {point:<10} {name:<6} {a['role']:<7} decision p50 {_fmt(a['decision_ms_p50'], ' ms', 3)}"
                f" p99 {_fmt(a['decision_ms_p99'], ' ms', 3)}  fallback {_fmt((a['fallback_rate'] or 0) * 100, ' %', 1)}{extra}"
            )
    for flow, f in summary["flows"].items():
        where = "  real host" if f.get("real") else ""
        lines.append(f"  flow {flow:<14} {f['kind']:<8} {_fmt(f['throughput_mbps'], ' Mbps')}{where}")
    if rt := summary.get("realtime"):
        lines.append(f"  real time: lateness p99 {_fmt(rt['lateness_p99_ms'], ' ms', 3)}  max {_fmt(rt['lateness_max_ms'], ' ms')}"
                     f"  late events {rt['late_events']}/{rt['samples']} (> {rt['late_threshold_ms']:g} ms)")
    lines.append(
        f"  L:C ratio {_fmt(summary.get('l_c_ratio'))}  Jain {_fmt(summary.get('jain_index'), digits=3)}  "
        f"utilisation {_fmt((summary.get('utilisation') or 0) * 100, ' %', 1)}"
    )
    for client, v in (summary.get("video") or {}).items():
        lines.append(
            f"  video {client:<12} QoE_lin {_fmt(v.get('qoe_lin_mean_after_first'), digits=3)} (first chunk excluded)  "
            f"bitrate {_fmt((v.get('avg_bitrate_bps') or 0) / 1e3, ' kbps', 0)}  rebuffer {_fmt(v.get('rebuffer_s'), ' s')}  "
            f"chunks {v.get('chunks_played')}/{v.get('chunks_total')}"
        )
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    overrides = {"seed": args.seed, "duration_s": args.duration}
    _agent_env(args)
    if args.real:
        overrides["emulation.mode"] = "real"
    config = load_scenario(args.scenario, overrides)
    if config.real_mode:  # fail at once, before any process starts, if the machine cannot do it
        from emulation.real.preflight import RealModeUnavailable, check_real_mode

        try:
            check_real_mode()
        except RealModeUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    aqm = parse_agent(None if args.aqm in (None, "dualpi2") else args.aqm.removesuffix("-agent"), "--aqm")
    abr = parse_agent(args.abr, "--abr")
    config, agents = with_agents(config, aqm, abr, tuple(args.shadow), timeout_s=args.agent_timeout,
                                 connect_timeout_s=args.agent_connect_timeout, policy_server=policy_server_choice())
    if args.decision_delay:
        config = with_decision_delays(config, dict(args.decision_delay))
    # The default directory belongs to the testbed: a new run of the same scenario, policy and seed replaces it.
    run_dir = Path(args.out) if args.out else default_run_dir(config, Path(args.runs_dir), agents)
    print(f"running {config.name} (seed {config.seed}, {config.duration_s:g} s simulated) -> {run_dir}", file=sys.stderr)
    for name, point in (("aqm", config.control.aqm), ("abr", config.control.abr)):
        if point is not None and point.external:
            last = len(config.all_video()) - 1
            if point.ipc:
                where = f"ipc://{point.ipc}" if name == "aqm" else f"ipc://{point.ipc}-0..{last}"
            else:
                ports = f"{point.port}" if name == "aqm" else f"{point.port}..{point.port + last}"
                where = f"tcp://{point.host}:{ports}"
            print(f"  {name} control point: waiting up to {point.connect_timeout_s:g} s for your agent at {where}",
                  file=sys.stderr)
    result = run_config(config, run_dir, timeout_s=args.timeout, agents=agents,
                        overwrite=args.overwrite or not args.out)
    if result.status != "ok":
        print(f"run failed: {result.error}", file=sys.stderr)
        return 1
    print(format_summary(result.summary))
    print(f"wall time {result.wall_s:.1f} s; results in {run_dir}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from agents.registry import policy_names

    print("scenarios:")
    for name, path in list_scenarios().items():
        print(f"  {name:<22} {path}")
    for control in ("aqm", "abr"):
        print(f"{control} policies: {', '.join(policy_names(control))}")
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number > 0), got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (a number > 0), got {text!r}")
    return value


def _decision_delay_arg(text: str) -> tuple[str, str | float]:
    """POINT=DELAY: aqm or abr, and none, measured or a delay in ms."""
    point, sep, value = text.partition("=")
    if not sep or point not in ("aqm", "abr"):
        raise argparse.ArgumentTypeError(f"expected aqm=DELAY or abr=DELAY (e.g. aqm=12, abr=measured), got {text!r}")
    try:
        return point, check_decision_delay(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _agent_timeouts(parser: argparse.ArgumentParser, connect: bool = True) -> None:
    parser.add_argument("--agent-timeout", type=_positive_seconds, default=30.0, metavar="S",
                        help="seconds either side waits for each answer of the other during a run (default 30; "
                        "the start-up wait is 120 s)")
    if connect:
        parser.add_argument("--agent-connect-timeout", type=_positive_seconds, default=120.0, metavar="S",
                            help="seconds either side waits for the other to come up at the start (default 120: "
                            "covers the simulation's start-up and an LLM agent's loading)")


def _set_arg(text: str) -> tuple[str, object]:
    """KEY=VALUE with a dotted scenario key; the value is read as YAML (numbers, lists, mappings)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. bottleneck.rate_mbps=50), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _grid_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by compare and sweep: where results go and where runs execute."""
    parser.add_argument("--out", help="results root: <out>/<scenario>/<policy>/<params>/<seed>/ and <out>/report/")
    parser.add_argument("--duration", type=float, help="simulated seconds of every run (default: the scenario's)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: a pool on this machine; ray: Ray tasks (paths on a shared filesystem)")
    parser.add_argument("--address", help="Ray cluster address (e.g. HOST:6379; default: RAY_ADDRESS, a cluster "
                        "started here, or a new local instance)")
    parser.add_argument("--jobs", type=int, help="runs at a time with the local backend (default: one per core)")
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    parser.add_argument("--timeout", type=_positive_seconds, help="wall-clock limit of each run in seconds")
    _agent_timeouts(parser, connect=False)
    _policy_server_option(parser)
    parser.add_argument("--llm-checkpoint", help="adapted LLM checkpoint directory for the llm policy (acting or "
                        "shadow; on a shared filesystem with --backend ray)")
    parser.add_argument("--llm-backbone", help="without a checkpoint: local model dir, 'default' (SmolLM2-135M) or "
                        "'tiny'")


def _agent_env(args: argparse.Namespace) -> None:
    """Agents read the LLM's location from the environment they inherit (Ray tasks get it forwarded)."""
    if args.llm_checkpoint:
        os.environ["TESTBED_LLM_CHECKPOINT"] = str(Path(args.llm_checkpoint).resolve())
    if args.llm_backbone:
        os.environ["TESTBED_LLM_BACKBONE"] = args.llm_backbone
    if args.policy_server:
        os.environ["TESTBED_POLICY_SERVER"] = args.policy_server


def _policy_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy-server", metavar="auto|none|tcp://HOST:PORT",
                        help="where LLM control points are answered: auto (default) one policy server per run "
                        "holding one model for all of them; none: an agent process per control point; "
                        "tcp://HOST:PORT: a running `python -m agents server` (shared by every run)")


def _print_report(paths: ReportPaths) -> int:
    print(paths.markdown)
    print(f"report: {paths.index_html}  ({paths.runs_ok} runs ok, {paths.runs_failed} failed; "
          f"numbers in {paths.summary_csv})", file=sys.stderr)
    return 1 if paths.runs_failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from testbed.compare import compare

    _agent_env(args)
    overrides = dict(args.set) | ({"duration_s": args.duration} if args.duration is not None else {})
    return _print_report(compare(args.scenario, args.policies, args.seeds, args.out, overrides, args.backend,
                                 args.jobs, args.address, args.traces, args.retry_failed, args.timeout,
                                 agent_timeout_s=args.agent_timeout))


def cmd_sweep(args: argparse.Namespace) -> int:
    from testbed.compare import sweep

    _agent_env(args)
    return _print_report(sweep(Path(args.sweep_file), args.out, args.duration, args.backend, args.jobs, args.address,
                               args.retry_failed, args.timeout, agent_timeout_s=args.agent_timeout))


def cmd_report(args: argparse.Namespace) -> int:
    from testbed.compare import report

    return _print_report(report(args.runs, Path(args.output)))


def cmd_learn(args: argparse.Namespace) -> int:
    from testbed.learn_aqm import AqmRecipe, recipe_task

    if recipe_task(args.recipe) == "aqm":
        from testbed.learn_aqm import learn as learn_aqm

        aqm_recipe = AqmRecipe.load(args.recipe)
        out = Path(args.out) if args.out else Path("runs") / "learn" / aqm_recipe.name
        learn_aqm(aqm_recipe, out, store=args.store)
        print(f"checkpoint: {out / 'checkpoint'} (use it with --aqm llm --llm-checkpoint {out / 'checkpoint'})")
        return 0
    from testbed.learn import Recipe, learn

    recipe = Recipe.load(args.recipe)
    out = Path(args.out) if args.out else Path("runs") / "learn" / recipe.name
    learn(recipe, out)
    print(f"checkpoint: {out / 'checkpoint'} (use it with --abr llm --llm-checkpoint {out / 'checkpoint'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description="L4S / ABR emulation testbed")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one scenario in a simulation process")
    run.add_argument("scenario", help="scenario name from scenarios/ or a path to a YAML file")
    run.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    run.add_argument("--duration", type=float, help="simulated seconds (default: the scenario's)")
    run.add_argument("--out", help="run directory (default: runs/<scenario>/<policy>/<seed>, replaced by a new "
                     "run); must be empty or new unless --overwrite")
    run.add_argument("--overwrite", action="store_true", help="clear --out first if it holds an earlier run")
    run.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="root of default run directories")
    run.add_argument("--timeout", type=_positive_seconds, help="wall-clock limit in seconds")
    run.add_argument("--aqm", help="AQM policy: dualpi2 (in-queue PI2, default), an agent policy the testbed starts "
                     "(pi2, pie, fixed, llm; 'pi2-agent' works too), or tcp://HOST:PORT for an agent you started")
    run.add_argument("--abr", help="ABR policy for every video client: an agent policy the testbed starts (bba, "
                     "rate, mpc, bola, llm), or tcp://HOST:BASEPORT for agents you started (client i at BASEPORT+i)")
    run.add_argument("--shadow", action="append", default=[], metavar="NAME",
                     help="policy that shadows the acting one in each agent the testbed starts (repeatable)")
    run.add_argument("--decision-delay", action="append", default=[], type=_decision_delay_arg,
                     metavar="POINT=DELAY", help="when an agent's actions take effect, in simulated time: aqm=12 or "
                     "abr=80 (ms after the state; the simulation runs on meanwhile), aqm=measured (after each "
                     "decision's wall-clock round trip), aqm=none (at once, the default); repeatable")
    _agent_timeouts(run)
    _policy_server_option(run)
    run.add_argument("--llm-checkpoint", help="adapted LLM checkpoint directory for the llm policy (acting or shadow)")
    run.add_argument("--llm-backbone", help="without a checkpoint: local model dir, 'default' (SmolLM2-135M) or 'tiny'")
    run.add_argument("--real", action="store_true", help="real mode (emulation.mode: real): in real time, endpoints "
                     "marked real on Linux hosts in namespaces (needs root and /dev/net/tun)")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list scenarios and policies")
    lst.set_defaults(func=cmd_list)

    cmp = sub.add_parser("compare", help="run a scenario under several policies and seeds, then report")
    cmp.add_argument("scenario", help="scenario name or YAML file")
    cmp.add_argument("--policies", required=True,
                     help="comma-separated: dualpi2 (in-queue), aqm=X, abr=Y, shadow=Z joined with + "
                     "(e.g. dualpi2,aqm=pi2,aqm=fixed+shadow=pi2), or bare policy names")
    cmp.add_argument("--seeds", default="1", help="1..10 or 1,2,5 (default 1)")
    cmp.add_argument("--traces", type=Path, help="directory of bandwidth traces: one run per trace file")
    cmp.add_argument("--set", action="append", default=[], type=_set_arg, metavar="KEY=VALUE",
                     help="scenario override with a dotted key, for every run (repeatable)")
    _grid_options(cmp)
    cmp.set_defaults(func=cmd_compare)

    swp = sub.add_parser("sweep", help="run the grid of a sweep file (scenarios x params x policies x seeds)")
    swp.add_argument("sweep_file", help="SWEEP.yaml: scenario(s), params, policies, seeds, out")
    _grid_options(swp)
    swp.set_defaults(func=cmd_sweep)

    lrn = sub.add_parser("learn", help="learn an ABR or AQM policy from a recipe: teachers, pools, adaptation, DAgger, "
                         "closed-loop selection on validation traces or mixes")
    lrn.add_argument("recipe", help="recipe YAML (e.g. llm/checkpoints/abr-tiny/recipe.yaml); "
                     "task: aqm selects the AQM recipe (testbed/learn_aqm.py)")
    lrn.add_argument("--out", help="output directory (default: runs/learn/<recipe name>)")
    lrn.add_argument("--store", help="AQM: results store of teacher and frontier runs, resumed and shared with "
                     "benchmarks.bench_aqm_frontier (default: <out>/runs)")
    lrn.set_defaults(func=cmd_learn)

    rep = sub.add_parser("report", help="rebuild a report from stored runs")
    rep.add_argument("runs", nargs="+", type=Path, help="run directories, or trees holding them")
    rep.add_argument("-o", "--output", required=True, help="report directory (index.html, summary.csv, plots)")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with lifecycle.stop_signals_interrupt():  # SIGTERM and SIGHUP stop a run the way Ctrl-C does
            return args.func(args)
    except (ScenarioError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable results directory, a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        lifecycle.ignore_stop_signals()
        print(f"interrupted ({lifecycle.signal_name(exc)})", file=sys.stderr)
        return lifecycle.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
