"""Command line: ``python -m llm pool ...`` builds an experience pool, ``python -m llm adapt ...`` trains a policy.

Thin wrappers: each subcommand parses its arguments and calls the library function
(:func:`llm.pool.build_pool`, :func:`llm.train.adapt`) that tests call directly.
"""

from __future__ import annotations

import argparse
import json
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
        include_shadow=args.include_shadow,
        history_ticks=args.history_ticks,
    )
    counts = pool.manifest["counts"]
    print(
        f"pool {args.out}: task {pool.task}, {counts['files']} files, {counts['episodes']} episodes, "
        f"{counts['steps']} steps ({counts['skipped_episodes']} episodes under 2 rows skipped), "
        f"{pool.n_actions} actions, rewards [{pool.rewards.reward_min:.4g}, {pool.rewards.reward_max:.4g}], "
        f"max scaled return {pool.rewards.max_return:.4g}"
    )
    print(f"action counts: {counts['actions']}")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    lora = LoraSettings(
        rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=args.lora_targets
    )
    chosen = {f.name: getattr(args, f.name) for f in fields(TrainSettings) if getattr(args, f.name, None) is not None}
    settings = TrainSettings(**{**chosen, "lora": lora})
    summary = adapt(args.pool, args.out, backbone=args.backbone, val_pool_dir=args.val_pool, settings=settings)
    print(json.dumps({k: summary[k] for k in ("optimizer_steps", "final_train_loss", "best_validation")}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llm", description="LLM policy tools: build experience pools, adapt an LM into a policy."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    pool = commands.add_parser("pool", help="build an experience pool from decisions.parquet files")
    pool.add_argument("--task", choices=("abr", "aqm"), required=True)
    pool.add_argument("decisions", nargs="+", help="decisions.parquet files")
    pool.add_argument("--out", required=True, help="pool directory to write")
    pool.add_argument("--n-actions", type=int, default=None, help="AQM p' grid size (default 17)")
    pool.add_argument("--include-shadow", action="store_true", help="also make episodes of shadow policies")
    pool.add_argument("--history-ticks", type=int, default=8, help="AQM history length in ticks")
    pool.set_defaults(run=_cmd_pool)

    defaults = TrainSettings()
    adapt_cmd = commands.add_parser("adapt", help="adapt the LM into a policy on a pool (LoRA, offline RL)")
    adapt_cmd.add_argument("--pool", required=True, help="training pool directory")
    adapt_cmd.add_argument("--val-pool", default=None, help="validation pool (default: hold out episodes)")
    adapt_cmd.add_argument("--out", required=True, help="checkpoint directory to write")
    adapt_cmd.add_argument(
        "--backbone", default="default", help="'default' (SmolLM2-135M), 'tiny' (random, for smoke runs) or a path"
    )
    for name in (
        "epochs",
        "batch_size",
        "grad_accum",
        "warmup_steps",
        "window",
        "stride",
        "eval_every",
        "patience",
        "max_steps",
        "log_every",
        "channels",
        "seed",
    ):
        adapt_cmd.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {getattr(defaults, name)}"
        )
    for name in ("lr", "weight_decay", "clip_grad", "val_fraction"):
        adapt_cmd.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=None, help=f"default {getattr(defaults, name)}"
        )
    adapt_cmd.add_argument("--select-on", choices=("loss", "accuracy"), default=None)
    adapt_cmd.add_argument("--device", default=None, help="default cpu")
    adapt_cmd.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    adapt_cmd.add_argument("--lora-rank", type=int, default=defaults.lora.rank)
    adapt_cmd.add_argument("--lora-alpha", type=int, default=defaults.lora.alpha)
    adapt_cmd.add_argument("--lora-dropout", type=float, default=defaults.lora.dropout)
    adapt_cmd.add_argument("--lora-targets", nargs="+", default=None, help="module names (default per architecture)")
    adapt_cmd.set_defaults(run=_cmd_adapt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
