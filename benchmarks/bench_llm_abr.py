"""Learned ABR policies against the classic ones, chunk level, on every validation trace: one table.

Every policy plays every trace of ``valid-fcc`` and ``valid-norway`` (all of them, and the
``report`` halves that model selection never saw) in the chunk-level simulator. For each set:
mean QoE_lin (first chunk excluded), bitrate, rebuffering, switches, and the decision time p50
(measured in the run, ``--threads`` torch threads). A learned variant given as several
checkpoints (``NAME=DIR1,DIR2,...``, one per training seed) gets the mean and a 95 % confidence
interval over its seeds; the classic policies are deterministic. A checkpoint that acts behind a
stall guard (``stall_guard_s`` in its config) also plays bare, as ``NAME, bare``.

Three clairvoyant references: the learners' teacher ``oracle-f1`` (RobustMPC's 5-chunk search
knowing the next chunk's true download time), ``oracle`` (the same search on the true link for
all 5 chunks) and ``hindsight`` (dynamic programming to the video's end on the true link: the
offline optimum within grid error, which bounds what any policy could reach). The "of headroom"
column places each policy between RobustMPC (0 %) and that optimum (100 %).

    .venv/bin/python -m benchmarks.bench_llm_abr --variant mlp=runs/learn/abr-mlp/checkpoint \\
        --variant tiny=runs/learn/abr-tiny-s0/checkpoint,runs/learn/abr-tiny-s1/checkpoint [--json out.json]

Without ``--variant`` the shipped checkpoints (``llm/checkpoints/abr-*``) are compared.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from emulation.video import default_manifest, load_trace_set
from emulation.video.traces import split_half
from testbed.chunksim import POLICIES, TEACHERS, evaluate

SETS = ("valid-fcc", "valid-norway")
CLASSIC = ("bba", "rate", "bola", "mpc")
#: clairvoyant references (they see the future link): the teacher, the 5-chunk planner, the offline optimum
REFERENCES = ("oracle-f1", "oracle", "hindsight")
#: two-sided 95 % Student t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _learned(path: str, stall_guard_s: str | None = None):
    """The checkpoint as its agent acts (behind its stall guard, if it names one), or with the guard given."""
    from agents.llm_agent import LlmPolicy

    return lambda: LlmPolicy("abr", checkpoint=path, device="cpu", stall_guard_s=stall_guard_s)


def _guarded(path: str) -> bool:
    return json.loads((Path(path) / "policy_config.json").read_text()).get("stall_guard_s") is not None


def _row(table: pd.DataFrame) -> dict:
    return {"qoe": float(table["qoe_lin"].mean()), "bitrate_mbps": float(table["avg_bitrate_bps"].mean() / 1e6),
            "rebuffer_s": float(table["rebuffer_s"].mean()), "switches": float(table["switches"].mean()),
            "decision_ms_p50": float(table["decision_ms_p50"].median())}


def measure(variants: dict[str, list[str]], parts: tuple[str, ...] = ("all", "report")) -> list[dict]:
    """One row per (policy, seed, set, part)."""
    manifest = default_manifest()
    traces = {s: load_trace_set(s) for s in SETS}
    rows = []
    policies = {name: [POLICIES[name]] for name in CLASSIC} | {name: [TEACHERS[name]] for name in REFERENCES} | {
        name: [_learned(p) for p in paths] for name, paths in variants.items()}
    for name, paths in variants.items():  # what a checkpoint's stall guard adds: the bare model beside it
        if any(_guarded(p) for p in paths):
            policies[f"{name}, bare"] = [_learned(p, "none") for p in paths]
    for name, factories in policies.items():
        for seed, factory in enumerate(factories):
            for set_name, all_traces in traces.items():
                t0 = time.perf_counter()
                table = evaluate({name: factory}, all_traces, manifest)
                for part in parts:
                    chosen = {t.name for t in split_half(all_traces, part)}
                    rows.append({"policy": name, "seed": seed, "set": set_name, "part": part,
                                 **_row(table[table["trace"].isin(chosen)])})
                print(f"  {name} seed {seed} {set_name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def _ci(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    half = _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.3f} ± {half:.3f}"


def table(rows: list[dict], part: str) -> str:
    """Markdown: per policy and set, QoE (± CI over seeds), bitrate, rebuffer, switches, decision p50, vs MPC,
    and the share of the headroom between RobustMPC and the offline optimum (``hindsight``) it takes."""
    frame = pd.DataFrame([r for r in rows if r["part"] == part])
    mpc = {s: frame[(frame["policy"] == "mpc") & (frame["set"] == s)]["qoe"].mean() for s in SETS}
    best = {s: frame[(frame["policy"] == "hindsight") & (frame["set"] == s)]["qoe"].mean() for s in SETS}
    lines = ["| policy | set | QoE_lin | vs RobustMPC | of headroom | bitrate Mbps | rebuffer s | switches "
             "| decision p50 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (policy, set_name), group in frame.groupby(["policy", "set"], sort=False):
        qoe = group["qoe"].tolist()
        gap = best[set_name] - mpc[set_name]
        share = f"{(statistics.fmean(qoe) - mpc[set_name]) / gap * 100:+.0f} %" if gap > 0 else "-"
        lines.append(f"| {policy} | {set_name} | {_ci(qoe)} | {(statistics.fmean(qoe) / mpc[set_name] - 1) * 100:+.1f} % "
                     f"| {share} "
                     f"| {group['bitrate_mbps'].mean():.3f} | {group['rebuffer_s'].mean():.2f} "
                     f"| {group['switches'].mean():.1f} | {group['decision_ms_p50'].median():.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR[,DIR...]",
                        help="a learned policy, one checkpoint per training seed (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {}
    for text in args.variant:
        name, _, paths = text.partition("=")
        variants[name] = [p for p in paths.split(",") if p]
    if not variants:
        from llm.shipped import shipped

        variants = {name: [str(path)] for name, path in shipped().items() if name.startswith("abr-")}
    rows = measure(variants)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    for part, title in (("all", "every trace"), ("report", "the report halves (never used for selection)")):
        print(f"\nChunk-level QoE on {title} of {', '.join(SETS)}; decision time on {args.threads} threads\n")
        print(table(rows, part))


if __name__ == "__main__":
    main()
