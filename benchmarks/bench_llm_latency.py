"""Decision latency of the LLM policy: KV cache vs re-encoding the window (NetLLM), CPU and CUDA.

Runs the default backbone (SmolLM2-135M, converted once into the cache) with random
encoders: latency does not depend on training. For each configuration one episode of
``--decisions`` steps is played with window 20; p50/p99/mean are over the steady state
(decisions after the window first fills), where the cache's slide costs show.

    .venv/bin/python benchmarks/bench_llm_latency.py [--task abr|aqm] [--threads N] [--decisions N]

Configurations: ``uncached`` re-encodes the last 20 steps every decision; ``cached keep=19``
slides exactly (rebuilds the cache every decision once full); ``cached keep=10`` (the
default) rebuilds every 10 decisions. ``decider`` is the public ``LlmDecider.decide`` path
(featurisation included, default settings). On CUDA (bf16) the cached and uncached sessions
also run batched across 8 and 32 environments (latency of one batched step).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agents.protocol.control_points import AbrObservation, AqmObservation  # noqa: E402
from llm.backbone import default_backbone_dir  # noqa: E402
from llm.inference import LlmDecider  # noqa: E402
from llm.policy import DecisionSession, amortised_tokens_per_decision  # noqa: E402

WINDOW = 20


def _obs_fields(task: str) -> list[str]:
    return AbrObservation.field_names(6) if task == "abr" else AqmObservation.field_names()


def _session_latencies(decider: LlmDecider, batch: int, use_cache: bool, keep: int, n: int) -> np.ndarray:
    """Wall ms of each DecisionSession.step over an episode of n decisions (steady state only)."""
    policy = decider.policy
    device = policy.head.weight.device
    session = DecisionSession(policy, batch_size=batch, keep_steps=keep, use_cache=use_cache)
    gen = torch.Generator().manual_seed(0)
    prev, times = None, []
    for t in range(n):
        returns = torch.rand(batch, generator=gen).to(device)
        states = torch.randn(batch, policy.n_values, generator=gen).to(device)
        steps = torch.full((batch,), t, device=device)
        t0 = time.perf_counter()
        prev = session.step(returns, states, steps, prev).argmax(-1)
        prev.cpu()  # wait for the device
        times.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(times[WINDOW:])


def _decider_latencies(decider: LlmDecider, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    decider.reset()
    decider.latency_ms.clear()
    for _ in range(n):
        obs = dict(zip(decider.obs_fields, rng.uniform(0, 1, len(decider.obs_fields)), strict=True))
        decider.decide(obs, float(rng.uniform()))
    return np.asarray(decider.latency_ms[WINDOW:])


def _row(device: str, batch: int, mode: str, ms: np.ndarray) -> dict:
    return {
        "device": device,
        "batch": batch,
        "mode": mode,
        "p50": np.percentile(ms, 50),
        "p99": np.percentile(ms, 99),
        "mean": ms.mean(),
    }


def run(task: str, n: int, device: str, dtype: str, batches: list[int]) -> list[dict]:
    decider = LlmDecider.untrained(
        task,
        default_backbone_dir(),
        6 if task == "abr" else 17,
        obs_fields=_obs_fields(task),
        device=device,
        dtype=dtype,
    )
    for _ in range(2):  # warm up allocator and kernels
        _session_latencies(decider, 1, True, WINDOW // 2, WINDOW + 2)
    rows = [_row(device, 1, "decider (cached keep=10)", _decider_latencies(decider, n))]
    for batch in batches:
        rows.append(_row(device, batch, "uncached (re-encode window)", _session_latencies(decider, batch, False, 1, n)))
        rows.append(
            _row(device, batch, "cached keep=19 (exact slide)", _session_latencies(decider, batch, True, 19, n))
        )
        rows.append(_row(device, batch, "cached keep=10 (default)", _session_latencies(decider, batch, True, 10, n)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("abr", "aqm"), default="abr")
    parser.add_argument("--decisions", type=int, default=100, help="decisions per episode (first 20 not counted)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch")
    parser.add_argument("--no-cpu", action="store_true", help="only the CUDA part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    if not args.no_cpu:
        rows += run(args.task, args.decisions, "cpu", "float32", [1])
    if torch.cuda.is_available():
        rows += run(args.task, args.decisions, "cuda", "bfloat16", [1, 8, 32])
    else:
        print("CUDA not available: GPU rows skipped")

    tokens = 8 if args.task == "abr" else 11
    print(
        f"\ntask {args.task}, window {WINDOW} steps x {tokens} tokens, {args.decisions - WINDOW} steady-state decisions, "
        f"{args.threads} CPU threads; amortised tokens/decision: uncached {tokens * WINDOW}, "
        f"keep=19 {amortised_tokens_per_decision(tokens, WINDOW, 19):.0f}, "
        f"keep=10 {amortised_tokens_per_decision(tokens, WINDOW, 10):.0f}"
    )
    print(f"{'device':<7}{'batch':>6}  {'mode':<30}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for r in rows:
        print(f"{r['device']:<7}{r['batch']:>6}  {r['mode']:<30}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['mean']:>9.2f}")
    for device in dict.fromkeys(r["device"] for r in rows):
        for batch in dict.fromkeys(r["batch"] for r in rows if r["device"] == device):
            by_mode = {r["mode"]: r for r in rows if r["device"] == device and r["batch"] == batch}
            uncached = by_mode.get("uncached (re-encode window)")
            if uncached is None:
                continue
            for mode in ("cached keep=19 (exact slide)", "cached keep=10 (default)"):
                ratio = by_mode[mode]["mean"] / uncached["mean"]
                print(f"{device} batch {batch}: {mode} / uncached mean latency = {ratio:.2f}")


if __name__ == "__main__":
    main()
