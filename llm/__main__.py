"""Command line: ``python -m llm pool ...`` builds an experience pool, ``python -m llm adapt ...`` trains a
policy, ``python -m llm test ...`` evaluates a checkpoint in the simulators.

Thin wrappers: each subcommand parses its arguments and calls the library function
(:func:`llm.pool.build_pool`, :func:`llm.train.adapt`) that tests call directly. ``test`` runs the
simulators as separate processes (``testbed``), so this package still imports nothing from the rest
of the project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import fields

from llm.lora import LoraSettings
from llm.pool import build_pool
from llm.train import TrainSettings, adapt


def _cmd_pool(args: argparse.Namespace) -> int:
    pool = build_pool(
        args.decisions,
        args.out,
        args.task,
        n_actions=args.n_actions,
        roles=tuple(args.roles),
        history_ticks=args.history_ticks,
    )
    counts = pool.manifest["counts"]
    print(
        f"pool {args.out}: task {pool.task}, {counts['files']} files, {counts['episodes']} episodes, "
        f"{counts['steps']} steps ({counts['skipped_episodes']} episodes under 2 rows skipped), "
        f"{pool.n_actions} actions, rewards scaled by 1/{pool.rewards.scale:g} above {pool.rewards.floor:g}, "
        f"max scaled return {pool.rewards.max_return:.4g}"
    )
    print(f"action counts: {counts['actions']}")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    if args.recipe:  # a whole recipe needs the simulators: the testbed runs it (as `llm test` does)
        return subprocess.run([sys.executable, "-m", "testbed", "learn", args.recipe, "--out", args.out]).returncode
    if not args.pool:
        print("adapt needs --pool (one training run) or --recipe (teachers, pools, DAgger, selection)",
              file=sys.stderr)
        return 2
    lora = LoraSettings(
        rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=args.lora_targets
    )
    chosen = {f.name: getattr(args, f.name) for f in fields(TrainSettings) if getattr(args, f.name, None) is not None}
    settings = TrainSettings(**{**chosen, "lora": lora})
    summary = adapt(args.pool, args.out, backbone=args.backbone, val_pool_dir=args.val_pool, settings=settings)
    print(json.dumps({k: summary[k] for k in ("optimizer_steps", "final_train_loss", "best_validation")}, indent=2))
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint beside classic baselines: chunk-level (ABR) and/or one packet-level scenario run."""
    env = dict(os.environ, TESTBED_LLM_CHECKPOINT=os.path.abspath(args.checkpoint))
    task = json.loads(open(os.path.join(args.checkpoint, "policy_config.json")).read()).get("task")
    status = 0
    if task == "abr" and args.traces:
        cmd = [sys.executable, "-m", "testbed.chunksim", "--policy", ",".join(["llm", *args.baselines.split(",")]),
               "--traces", args.traces]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print(f"chunk-level simulator on {args.traces}:", flush=True)
        status |= subprocess.run(cmd, env=env).returncode
    if args.scenario:
        control = "--abr" if task == "abr" else "--aqm"
        cmd = [sys.executable, "-m", "testbed", "run", args.scenario, control, "llm"]
        if args.duration:
            cmd += ["--duration", str(args.duration)]
        print(f"packet-level scenario {args.scenario}:", flush=True)
        status |= subprocess.run(cmd, env=env).returncode
    if not (args.scenario or (task == "abr" and args.traces)):
        print("nothing to evaluate: give --traces (ABR) and/or --scenario", file=sys.stderr)
        return 2
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llm",
        description="LLM policy tools: build experience pools, adapt an LM into a policy, test it in the simulators."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    pool = commands.add_parser("pool", help="build an experience pool from decisions.parquet files")
    pool.add_argument("--task", choices=("abr", "aqm"), required=True)
    pool.add_argument("decisions", nargs="+", help="decisions.parquet files")
    pool.add_argument("--out", required=True, help="pool directory to write")
    pool.add_argument("--n-actions", type=int, default=None, help="AQM p' grid size (default 17)")
    pool.add_argument("--roles", nargs="+", choices=("acting", "shadow"), default=["acting"],
                      help="rows that form episodes: acting (default), shadow (a teacher's labels on the acting "
                      "policy's states, as DAgger relabels them), or both")
    pool.add_argument("--history-ticks", type=int, default=8, help="AQM history length in ticks")
    pool.set_defaults(run=_cmd_pool)

    defaults = TrainSettings()
    adapt_cmd = commands.add_parser("adapt", help="adapt the LM into a policy on a pool (LoRA, offline RL)")
    adapt_cmd.add_argument("--pool", help="training pool directory")
    adapt_cmd.add_argument("--recipe", help="a recipe YAML (e.g. a shipped checkpoint's recipe.yaml): run the whole "
                           "pipeline with `testbed learn`, reproducing that checkpoint into --out")
    adapt_cmd.add_argument("--val-pool", default=None, help="validation pool (default: hold out episodes)")
    adapt_cmd.add_argument("--out", required=True, help="checkpoint directory to write")
    adapt_cmd.add_argument(
        "--backbone", default="default", help="'default' (SmolLM2-135M), 'tiny' (random, for smoke runs) or a path"
    )
    for name in ("batch_size", "grad_accum", "window", "stride", "eval_every", "eval_windows", "patience",
                 "max_steps", "log_every", "channels", "seed", "backbone_layers"):
        adapt_cmd.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {getattr(defaults, name)}"
        )
    for name in ("epochs", "lr", "lora_lr", "weight_decay", "warmup_fraction", "clip_grad", "val_fraction"):
        adapt_cmd.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=None, help=f"default {getattr(defaults, name)}"
        )
    adapt_cmd.add_argument("--no-return-conditioning", dest="return_conditioning", action="store_false",
                           default=None, help="feed 0 as the return token (imitation in the same architecture)")
    adapt_cmd.add_argument("--select-on", choices=("loss", "accuracy"), default=None,
                           help="teacher-forced validation metric (closed-loop selection: testbed learn)")
    adapt_cmd.add_argument("--device", default=None, help="default cpu")
    adapt_cmd.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    adapt_cmd.add_argument("--lora-rank", type=int, default=defaults.lora.rank)
    adapt_cmd.add_argument("--lora-alpha", type=int, default=defaults.lora.alpha)
    adapt_cmd.add_argument("--lora-dropout", type=float, default=defaults.lora.dropout)
    adapt_cmd.add_argument("--lora-targets", nargs="+", default=None, help="module names (default per architecture)")
    adapt_cmd.set_defaults(run=_cmd_adapt)

    test_cmd = commands.add_parser("test", help="evaluate a checkpoint in the simulators beside classic baselines")
    test_cmd.add_argument("--checkpoint", required=True, help="checkpoint directory written by adapt")
    test_cmd.add_argument("--traces", help="ABR: traces for the chunk-level simulator: a directory or a set name (valid-fcc, valid-norway)")
    test_cmd.add_argument("--limit", type=int, default=None, help="first N traces only")
    test_cmd.add_argument("--baselines", default="bba,rate,mpc", help="classic ABR policies beside the LLM")
    test_cmd.add_argument("--scenario", help="also run this packet-level scenario with the LLM acting")
    test_cmd.add_argument("--duration", type=float, default=None, help="simulated seconds of that run")
    test_cmd.set_defaults(run=_cmd_test)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
