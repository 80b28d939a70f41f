"""Per-decision latency of the LLM ABR policy under each latency lever, on CPU with 1 and 2 torch threads.

Why: every lever in ``llm.engine.Levers`` (fewer blocks, early exit, D-LLM gates, CQIL concurrent
groups, per-head MLPs) promises less work per decision; what a control loop feels is wall time per
decision at batch 1 on a few cores, and only a ratio against full depth measured in the same run
survives the machine's other load.

How: every configuration is a real ``LlmDecider`` (``decide``: featurisation, the KV cache, the
window's slide, exit checks) on SmolLM2-135M (30 blocks) with random encoders and heads, since
latency does not depend on training. Where a lever's choice depends on data it is forced:

* early exit: heads after blocks 6 and 12, threshold 0 (always exits at the first head) or
  infinity (never exits: the cost of asking). An exited step still caches keys and values of the
  exit's hidden state in every block above it (CALM's propagation: one q/k/v product per block);
* gates: every router's output layer is zeroed and its bias set to 'skip' or 'execute', so a fixed
  set of blocks is skipped by every token; the executed ratio is then counted by hooks on the
  routers in an untimed episode. A skipped token is marked 'not a key' in that block's cache.

Configurations play one episode each per thread count, interleaved in chunks of one window slide
(10 decisions) so that they share the machine's load alike. p50/p99/mean are over the steady
state (decisions after the 20-step window first fills, cache rebuilds included); ``p50/full`` is
against full depth at the same thread count; ``executed`` is the fraction of the 30 blocks' work
done per token (early exit: mean blocks run; gates: tokens x blocks executed).

    .venv/bin/python -m benchmarks.bench_levers [--decisions 120] [--threads 1,2] [--json FILE]

Sized for about 5 minutes on 2 otherwise idle cores; holds about 4 GB (eleven policies). On cores shared with other
busy processes, 2 threads under OpenMP's default (spinning) wait policy can be ten times slower than
1 thread, and the run takes far longer: compare with ``OMP_WAIT_POLICY=PASSIVE`` in the environment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.bench_server import FIELDS, _observations  # noqa: E402
from llm.backbone import default_backbone_dir, load_backbone  # noqa: E402
from llm.inference import LlmDecider  # noqa: E402
from llm.policy import DEFAULT_WINDOW, build_policy  # noqa: E402

#: Decisions per turn of a configuration: one slide of the default window (20 steps, keep 10).
CHUNK = 10
#: Router bias (skip, execute) that makes a zeroed router always skip, or always execute.
SKIP_BIAS, EXECUTE_BIAS = (2.0, 0.0), (0.0, 2.0)


@dataclass
class Variant:
    """One configuration: the backbone's depth, the levers and, for gates, the fraction of blocks forced to skip."""

    name: str
    layers: int | None = None
    levers: dict = field(default_factory=dict)
    skip: float = 0.0


VARIANTS = [
    Variant("full depth (30 blocks)"),
    Variant("first 12 blocks", layers=12),
    Variant("first 6 blocks", layers=6),
    Variant("first 3 blocks", layers=3),
    Variant("first 6 blocks + head_mlp", layers=6, levers={"head_mlp": True}),
    Variant("exit 6|12: always at 6", levers={"exit_layers": [6, 12], "exit_threshold": 0.0}),
    Variant("exit 6|12: never", levers={"exit_layers": [6, 12], "exit_threshold": math.inf}),
    Variant("gates: skip ~50%", levers={"gates": True}, skip=0.5),
    Variant("gates: skip ~25%", levers={"gates": True}, skip=0.25),
    Variant("CQIL pairs, blocks 12-29", levers={"concurrent": [[i, i + 1] for i in range(12, 30, 2)]}),
    Variant("CQIL fours, blocks 14-29", levers={"concurrent": [list(range(i, i + 4)) for i in range(14, 30, 4)]}),
]


def _skipped_blocks(gated: list[int], n_blocks: int, fraction: float) -> list[int]:
    """``fraction`` of all blocks, spread evenly over the gated ones (blocks before ``gate_start`` always run)."""
    n_skip = round(fraction * n_blocks)
    return [gated[int(j * len(gated) / n_skip)] for j in range(n_skip)] if n_skip else []


def _force_gates(decider: LlmDecider, fraction: float) -> None:
    """Make every router answer the same regardless of input, so the skipped set is fixed and known."""
    policy = decider.policy
    routers = policy.lever_modules.routers
    gated = sorted(int(i) for i in routers)
    skipped = set(_skipped_blocks(gated, policy.decoder.n_blocks, fraction))
    with torch.no_grad():
        for i in gated:
            out = routers[str(i)].out
            out.weight.zero_()
            out.bias.copy_(torch.tensor(SKIP_BIAS if i in skipped else EXECUTE_BIAS))


def build(variant: Variant, base: LlmDecider) -> LlmDecider:
    """The decider of ``variant``: ``base``'s configuration with its depth and levers, built as untrained() does."""
    if not variant.levers and variant.layers is None:
        return base
    config = replace(base.config, backbone_layers=variant.layers, levers=variant.levers)
    torch.manual_seed(0)
    lm = load_backbone(default_backbone_dir(), layers=variant.layers)
    policy = build_policy(config, lm)
    decider = LlmDecider(policy, config)
    if variant.skip:
        _force_gates(decider, variant.skip)
    policy.decoder.fuse()
    policy.release_for_inference()
    return decider


def play(deciders: dict[str, LlmDecider], decisions: int, threads: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One episode per decider on ``threads`` threads, in turns of CHUNK decisions: (ms, blocks run) after the window."""
    torch.set_num_threads(threads)
    observations = _observations(decisions, seed=0)
    blocks: dict[str, list[int]] = {name: [] for name in deciders}
    for d in deciders.values():
        d.reset()
        d.latency_ms.clear()
    names = list(deciders)
    for turn, start in enumerate(range(0, decisions, CHUNK)):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            decider = deciders[name]
            for obs in observations[start:start + CHUNK]:
                decider.decide(obs, 0.5)
                blocks[name].append(decider.blocks_run)
    return {
        name: (np.asarray(d.latency_ms[DEFAULT_WINDOW:]), np.asarray(blocks[name][DEFAULT_WINDOW:]))
        for name, d in deciders.items()
    }


def gate_executed(decider: LlmDecider, decisions: int) -> float:
    """Fraction of token x block work the gates let run, counted by hooks on the routers over an untimed episode."""
    policy = decider.policy
    routers = policy.lever_modules.routers
    counts = {"executed": 0, "decided": 0}

    def count(_module, _args, logits: torch.Tensor) -> None:
        counts["executed"] += int((logits.softmax(-1)[..., 1] >= 0.5).sum())
        counts["decided"] += logits[..., 0].numel()

    hooks = [router.register_forward_hook(count) for router in routers.values()]
    try:
        decider.reset()
        for obs in _observations(decisions, seed=1):
            decider.decide(obs, 0.5)
    finally:
        for hook in hooks:
            hook.remove()
    tokens = counts["decided"] / len(routers)
    always = policy.decoder.n_blocks - len(routers)  # blocks before gate_start have no router
    return (counts["executed"] + always * tokens) / (policy.decoder.n_blocks * tokens)


def run(variants: list[Variant], decisions: int, threads: list[int]) -> list[dict]:
    """Rows of the table: every variant at every thread count, p50 ratio against the first variant (full depth)."""
    base = LlmDecider.untrained("abr", default_backbone_dir(), 6, obs_fields=FIELDS, device="cpu", dtype="float32")
    full_blocks = base.policy.decoder.n_blocks
    deciders = {v.name: build(v, base) for v in variants}
    executed = {}
    for v in variants:
        depth = deciders[v.name].policy.decoder.n_blocks
        executed[v.name] = gate_executed(deciders[v.name], DEFAULT_WINDOW + CHUNK) if v.skip else depth / full_blocks
    rows = []
    for n_threads in threads:
        t0 = time.perf_counter()
        results = play(deciders, decisions, n_threads)
        print(f"{n_threads} thread(s): {time.perf_counter() - t0:.0f} s", flush=True)
        full_p50 = float(np.percentile(results[variants[0].name][0], 50))
        for v in variants:
            ms, blocks_run = results[v.name]
            p50 = float(np.percentile(ms, 50))
            early = bool(v.levers.get("exit_layers"))
            rows.append({
                "config": v.name,
                "threads": n_threads,
                "decisions": len(ms),
                "p50_ms": p50,
                "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()),
                "p50_vs_full": p50 / full_p50,
                "executed": float(blocks_run.mean()) / full_blocks if early else executed[v.name],
            })
    return rows


def _thread_list(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes comma-separated integers, got {text!r}") from None
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"--threads needs counts >= 1, got {text!r}")
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=120,
                        help=f"decisions per episode (the first {DEFAULT_WINDOW}, while the window fills, not counted)")
    parser.add_argument("--threads", type=_thread_list, default=[1, 2], help="torch thread counts, e.g. 1,2")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.decisions <= DEFAULT_WINDOW:
        parser.error(f"--decisions must exceed the window ({DEFAULT_WINDOW} steps), got {args.decisions}")

    hf_logging.disable_progress_bar()  # eleven backbone loads would print eleven bars
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = run(VARIANTS, args.decisions, args.threads)
    elapsed = time.perf_counter() - t0
    print(f"\nSmolLM2-135M ABR policy, random weights, batch 1, CPU fp32; {args.decisions - DEFAULT_WINDOW} "
          f"steady-state decisions per row; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{elapsed:.0f} s; OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"{'config':<28}{'threads':>8}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'p50/full':>10}{'executed':>10}")
    for r in rows:
        print(f"{r['config']:<28}{r['threads']:>8}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['mean_ms']:>9.2f}"
              f"{r['p50_vs_full']:>10.2f}{r['executed']:>10.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
