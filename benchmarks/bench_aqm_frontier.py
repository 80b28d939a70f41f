"""DualPI2's delay-utilisation frontier on held-out mixes, and where AQM policies lie against it.

For every evaluation mix of a recipe (held-out rates, RTTs and flow counts, held-out seeds),
the in-queue DualPI2 runs at each PI2 target of the recipe: the frontier of (classic mean
sojourn, utilisation, L p99). Each policy to place (the shipped LLM AQM policy, PIE, or any
checkpoint) runs on the same mixes and seeds; its mean point is placed against the frontier
(``testbed.aqm_frontier.place``: beyond / on / inside / outside, with margins), and each
seed's run against that seed's own frontier (a paired verdict, free of seed-to-seed variation).
Also printed: the LLM's decision latency, in the runs and on ``--threads`` torch threads alone.

    python -m benchmarks.bench_aqm_frontier [--recipe llm/checkpoints/aqm-tiny/recipe.yaml]
        [--checkpoint DIR ...] [--classic pie,pi2:target_ms=2:alpha_hz=0.32:beta_hz=6.4]
        [--store runs/aqm-store] [--out runs/aqm-frontier]

Runs are kept in the store (shared with ``testbed learn``) and reused when run again; an LLM
run is keyed by a digest of its checkpoint's weights, so a retrained checkpoint runs afresh.
Writes ``frontier.png`` and ``frontier.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from testbed.aqm_cells import Cell, CellResult, Controller, parse_controller, run_cells
from testbed.aqm_frontier import Frontier, mean_point, place
from testbed.learn_aqm import AqmRecipe, frontier_cells, seed_frontiers, target_points

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "llm" / "checkpoints" / "aqm-tiny"


def checkpoint_label(path: Path) -> str:
    """``llm-<dir>-<digest of its weights and config>``: a retrained checkpoint, or one that decodes or is
    guarded differently, gets a new label (and new runs)."""
    digest = hashlib.sha1()
    for name in ("policy.safetensors", "adapter_model.safetensors", "policy_config.json"):
        digest.update((path / name).read_bytes())
    return f"llm-{path.name}-{digest.hexdigest()[:8]}"


def policy_controllers(checkpoints: list[Path], classic: list[str]) -> list[Controller]:
    controllers = [Controller("llm", checkpoint=str(c.resolve()), name=checkpoint_label(c)) for c in checkpoints]
    return controllers + [parse_controller(spec) for spec in classic]


def decision_latency(checkpoint: Path, decisions: Path, threads: int) -> dict:
    """Decision time of the checkpoint on ``threads`` torch threads, replaying the observations of a run."""
    import pandas as pd
    import torch

    from agents.protocol.control_points import AqmObservation
    from llm.inference import load_decider

    torch.set_num_threads(threads)
    decider = load_decider(checkpoint, device="cpu")
    table = pd.read_parquet(decisions)
    table = table[(table["role"] == "acting") & ~table["done"]]
    names = AqmObservation.field_names()
    for obs, reward in zip(table["obs"], table["reward"], strict=True):
        decider.decide(dict(zip(names, obs, strict=True)), float(reward))
    ms = np.array(decider.latency_ms[20:])  # the first decisions pay one-time costs
    return {"threads": threads, "decisions": int(ms.size), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def plot(path: Path, fronts: dict[str, Frontier], sweeps: dict[str, list], placed: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(fronts)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), squeeze=False)
    for ax, mix in zip(axes[0], names, strict=True):
        pts = sorted(sweeps[mix], key=lambda p: p.c_delay_ms)
        ax.plot([p.utilisation * 100 for p in pts], [p.c_delay_ms for p in pts], "o", color="0.6", ms=4,
                label="DualPI2 targets")
        for p in pts:
            ax.annotate(p.label.removeprefix("dualpi2-"), (p.utilisation * 100, p.c_delay_ms), fontsize=7,
                        textcoords="offset points", xytext=(3, -8), color="0.4")
        front = fronts[mix]
        ax.plot(front.utils * 100, front.delays, "-", color="0.3", label="frontier")
        for i, (label, entry) in enumerate(placed[mix].items()):
            colour = f"C{i}"
            for p in entry["seeds"]:
                ax.plot(p["utilisation"] * 100, p["c_delay_ms"], "x", color=colour, ms=5)
            mean = entry["mean"]
            ax.plot(mean["utilisation"] * 100, mean["c_delay_ms"], "*", color=colour, ms=13,
                    label=f"{label}: {entry['placement']['verdict']}")
        ax.set_title(mix, fontsize=8)
        ax.set_xlabel("utilisation %")
        ax.set_ylabel("classic mean sojourn ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=SHIPPED / "recipe.yaml",
                        help="recipe whose evaluation mixes, seeds, targets and run length are used")
    parser.add_argument("--checkpoint", type=Path, action="append", default=None,
                        help="LLM AQM checkpoint to place (repeatable; default: the shipped one)")
    parser.add_argument("--classic", default="pie",
                        help="classic agents to place too, comma-separated: pie, pi2, or KIND:FIELD=VALUE... "
                             "(e.g. pi2:target_ms=2:alpha_hz=0.32:beta_hz=6.4)")
    parser.add_argument("--store", type=Path, default=Path("runs/aqm-store"), help="results store (resumed)")
    parser.add_argument("--out", type=Path, default=Path("runs/aqm-frontier"), help="plot and JSON")
    parser.add_argument("--jobs", type=int, default=None, help="simulations at a time (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the decision-latency replay")
    args = parser.parse_args()
    recipe = AqmRecipe.load(args.recipe)
    if not recipe.evaluation:
        raise SystemExit(f"{args.recipe}: no evaluation mixes")
    checkpoints = args.checkpoint if args.checkpoint is not None else ([SHIPPED] if (SHIPPED / "policy_config.json").exists() else [])
    classic = [c for c in args.classic.split(",") if c]
    try:
        controllers = policy_controllers(checkpoints, classic)
    except ValueError as exc:
        raise SystemExit(f"--classic: {exc}") from None
    jobs = args.jobs or recipe.jobs
    settings = recipe.settings()
    t0 = time.time()
    mixes, seeds = recipe.evaluation, recipe.evaluation_seeds
    front_results = run_cells(frontier_cells(mixes, seeds, recipe.frontier_targets_ms), args.store, settings, jobs)
    failed = [r for r in front_results if r.status != "ok"]
    if failed:
        raise SystemExit(f"frontier run failed: {failed[0].run_dir}: {failed[0].error}")
    sweeps = target_points(front_results)
    fronts = {mix: Frontier.from_points(points) for mix, points in sweeps.items()}
    per_seed = seed_frontiers(front_results)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # several runs share the cores: one torch thread per agent
    policy_results = run_cells([Cell(m, c, s) for m in mixes for c in controllers for s in seeds], args.store,
                               settings, jobs)
    placed: dict[str, dict] = {m.name: {} for m in mixes}
    for c in controllers:
        for m in mixes:
            runs: list[CellResult] = [r for r in policy_results if r.cell.mix == m and r.cell.controller == c]
            bad = [r for r in runs if r.status != "ok"]
            if bad:
                print(f"{m.name}/{c.label}: run failed: {bad[0].error}")
                continue
            mean = mean_point([r.point for r in runs], c.label)
            placement = place(mean, fronts[m.name])
            agents = [(r.summary.get("agents") or {}).get("aqm", {}) for r in runs]
            latency = [a.get("llm", {}).get("decision_ms_p50") for a in agents if "llm" in a]
            placed[m.name][c.label] = {
                "seeds": [vars(r.point) for r in runs], "mean": vars(mean), "placement": placement.to_dict(),
                "seed_placements": {r.cell.seed: place(r.point, per_seed[(m.name, r.cell.seed)]).to_dict()
                                    for r in runs},
                "decision_p50_ms_in_runs": float(np.mean(latency)) if latency else None,
            }

    print(f"\nDualPI2 frontier and placed policies; held-out mixes, seeds {seeds}, {settings.duration_s:g} s runs "
          f"({settings.warmup_s:g} s warm-up excluded), targets {recipe.frontier_targets_ms} ms")
    for m in mixes:
        print(f"\n{m.name}")
        print(f"  {'controller':<34}{'C mean ms':>10}{'util %':>9}{'L p99 ms':>10}  verdict   delay margin ms  util margin %"
              "  per seed (own seed's frontier)")
        for p in sorted(sweeps[m.name], key=lambda p: p.c_delay_ms):
            on_front = "frontier" if p in fronts[m.name].points else "dominated"
            print(f"  {p.label:<34}{p.c_delay_ms:>10.2f}{p.utilisation * 100:>9.2f}{p.l_p99_ms:>10.2f}  {on_front}")
        for label, entry in placed[m.name].items():
            mean, pl = entry["mean"], entry["placement"]
            util_margin = None if pl["util_margin"] is None else pl["util_margin"] * 100
            seeds_said = ", ".join(f"{seed}: {sp['verdict']}" for seed, sp in entry["seed_placements"].items())
            print(f"  {label:<34}{mean['c_delay_ms']:>10.2f}{mean['utilisation'] * 100:>9.2f}{mean['l_p99_ms']:>10.2f}"
                  f"  {pl['verdict']:<8}  {_fmt(pl['delay_margin_ms']):>15}  {_fmt(util_margin):>13}"
                  f"  {seeds_said}{'' if pl['l_p99_ok'] else '  (L p99 worse)'}")
    print()
    for c in controllers:
        verdicts = [placed[m.name][c.label]["placement"]["verdict"] for m in mixes if c.label in placed[m.name]]
        paired = [sp["verdict"] for m in mixes if c.label in placed[m.name]
                  for sp in placed[m.name][c.label]["seed_placements"].values()]
        print(f"{c.label}: beyond the frontier on {verdicts.count('beyond')} of {len(mixes)} held-out mixes "
              f"({', '.join(verdicts)}); paired by seed, beyond in {paired.count('beyond')} of {len(paired)} runs")
    latency = {}
    for c, checkpoint in zip(controllers, checkpoints, strict=False):
        run = next(r for r in policy_results if r.cell.controller == c and r.status == "ok")
        latency[c.label] = decision_latency(checkpoint, run.decisions, args.threads)
        lat = latency[c.label]
        print(f"{c.label}: decision p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms on {args.threads} torch "
              f"thread(s), replaying {lat['decisions']} observations (DualPI2 updates every 16 ms)")
    print(f"load average {os.getloadavg()[0]:.1f}; {time.time() - t0:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "frontier.png", fronts, sweeps, placed)
    (args.out / "frontier.json").write_text(json.dumps({
        "recipe": str(args.recipe), "seeds": seeds, "targets_ms": recipe.frontier_targets_ms,
        "frontier": {m: [vars(p) for p in f.points] for m, f in fronts.items()},
        "sweep": {m: [vars(p) for p in pts] for m, pts in sweeps.items()},
        "placed": placed, "latency": latency}, indent=2))
    print(f"plot and table: {args.out / 'frontier.png'}, {args.out / 'frontier.json'}")


if __name__ == "__main__":
    main()
