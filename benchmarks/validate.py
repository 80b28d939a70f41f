"""``make validate``: the L4S senders (TCP Prague, with DCTCP beside it on the
same runs) over our DualPI2 against published L4S evaluations, and classic ABR
QoE in the chunk-level and the packet-level simulators.

Sections (``--only NAME`` picks some; ``--quick`` shortens all of them):

rtt-fairness      1 L4S + 1 Cubic at 50 Mbps, base RTT 10/20/80 ms, beside the
                  published Prague-vs-Cubic ratios over Linux DualPI2 (2.7, 2.1,
                  1.7; sane band 0.8-2.7). Each RTT runs long enough to reach
                  steady state and is measured after its ramp (80 ms: 90 s, from
                  40 s); the 80 ms runs also time the ramp to the fair share.
rq3               CableLabs' "RQ3 wired fairness" matrix on our DualPI2: 100 Mbps,
                  20 ms, 60 s; 1 L4S vs 1/4/8 Cubic, 2/4/8 L4S, mixed 4 + 4:
                  Jain's index and per-flow rates.
rtt-independence  L4S at 5 ms vs Cubic at 80 ms and the reverse (100 Mbps, 60 s),
                  4 L4S vs 4 Cubic at 200 Mbps / 5 ms (30 s): does the L:C ratio
                  move toward 1 with Prague?
catalogue         every catalogue scenario with L4S traffic over DualPI2: L queue
                  sojourn p99 with Prague vs DCTCP (no fairness bought with latency).
abr               for N traces of valid-fcc (the shared data, else the shipped
                  ones), mean QoE_lin (first chunk excluded) of each classic ABR
                  in the Pensieve-style chunk-level simulator and in the
                  packet-level client (abr-fcc, 80 ms RTT). See the README.

    python -m benchmarks.validate [--quick] [--seeds N] [--jobs J] [--only SECTION ...]
                                  [--traces N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emulation.config import L4S_CCS, SimulationConfig
from emulation.video.manifest import default_manifest
from emulation.video.traces import DEFAULT_TRACE_DIR, TraceError, load_trace_set, trace_set_dir
from testbed.chunksim import POLICIES, evaluate
from testbed.runner import run_config
from testbed.scenario import list_scenarios, load_scenario, read_scenario_data

#: Published L4S:Classic throughput ratios, Prague vs Cubic over Linux DualPI2 at 50 Mbps.
REFERENCE_RATIO = {10: 2.7, 20: 2.1, 80: 1.7}
REFERENCE_BAND = (0.8, 2.7)
#: A flow has ramped up when its goodput over the trailing window reaches this share of C/N.
RAMP_SHARE = 0.9
RAMP_WINDOW_S = 2.0
SECTIONS = ("rtt-fairness", "rq3", "rtt-independence", "catalogue", "abr")


@dataclass
class Run:
    """One simulation of the validation: a scenario, its overrides and the L4S sender."""

    section: str
    case: str
    cc: str
    seed: int
    scenario: str = "l4s-coexistence"
    overrides: dict = field(default_factory=dict)
    #: if set, time the L4S flow named "l4s" to reach RAMP_SHARE of this goodput
    fair_share_mbps: float | None = None
    #: cap on duration_s (catalogue scenarios in --quick)
    max_duration_s: float | None = None


@dataclass
class Outcome:
    run: Run
    summary: dict
    ramp_s: float = math.nan


def with_l4s_cc(config: SimulationConfig, cc: str) -> SimulationConfig:
    """``config`` with every L4S flow and L4S video client on congestion control ``cc``."""
    flows = [f.model_copy(update={"cc": cc}) if f.kind == "l4s" else f for f in config.flows]
    video = [v.model_copy(update={"cc": cc}) if v.transport == "l4s" else v for v in config.video]
    return config.model_copy(update={"flows": flows, "video": video})


def build_config(run: Run) -> SimulationConfig:
    config = load_scenario(run.scenario, {**run.overrides, "seed": run.seed})
    if run.max_duration_s is not None and config.duration_s > run.max_duration_s:
        probes = config.probes.model_copy(update={"warmup_s": min(config.probes.warmup_s, run.max_duration_s / 3)})
        config = config.model_copy(update={"duration_s": run.max_duration_s, "probes": probes})
    return with_l4s_cc(config, run.cc)


def time_to_share_s(flows: pd.DataFrame, flow: str, share_mbps: float) -> float:
    """First time ``flow``'s goodput over the trailing RAMP_WINDOW_S reaches RAMP_SHARE x ``share_mbps``."""
    rows = flows[flows["flow"] == flow].sort_values("time_s")
    if len(rows) < 2:
        return math.nan
    interval_s = float(rows["time_s"].diff().median())
    n = max(1, round(RAMP_WINDOW_S / interval_s))
    mbps = rows["rx_bytes"].rolling(n).sum() * 8 / (n * interval_s) / 1e6
    reached = rows["time_s"][mbps >= RAMP_SHARE * share_mbps]
    return float(reached.iloc[0]) if len(reached) else math.nan


def execute(run: Run, root: Path) -> Outcome:
    out_dir = root / f"{run.section}-{run.case}-{run.cc}-{run.seed}".replace(" ", "_")
    result = run_config(build_config(run), out_dir)
    if result.status != "ok":
        raise RuntimeError(f"{run.section} / {run.case} / {run.cc} / seed {run.seed}: {result.error}")
    outcome = Outcome(run, result.summary)
    if run.fair_share_mbps is not None:
        flows = pd.read_parquet(result.run_dir / "flows.parquet")
        outcome.ramp_s = time_to_share_s(flows, "l4s", run.fair_share_mbps)
    return outcome


def run_all(runs: list[Run], jobs: int) -> list[Outcome]:
    """Run every simulation (each in its own process, ``jobs`` at a time) in a scratch directory."""
    with tempfile.TemporaryDirectory(prefix="validate-") as tmp, ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda run: execute(run, Path(tmp)), runs))


def each_sender(section: str, case: str, seeds: int, overrides: dict, **options) -> list[Run]:
    """The runs of one case: every L4S sender, every seed, on the same scenario."""
    return [Run(section, case, cc, seed, overrides=overrides, **options)
            for cc in L4S_CCS for seed in range(1, seeds + 1)]


def dumbbell(duration_s: float, warmup_s: float, rate_mbps: float, *groups: tuple[str, str, int, float]) -> dict:
    """Overrides of l4s-coexistence: its DualPI2 dumbbell with flows from (name, kind, count, rtt_ms) groups."""
    return {"duration_s": duration_s, "probes.warmup_s": warmup_s, "bottleneck.rate_mbps": rate_mbps,
            "flows": [{"name": name, "kind": kind, "count": count, "rtt_ms": rtt} for name, kind, count, rtt in groups]}


def _numbers(values) -> list[float]:
    """The defined values (summary.json stores an undefined ratio as null)."""
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def _mean(values) -> float:
    values = _numbers(values)
    return statistics.mean(values) if values else math.nan


def _by_case(outcomes: list[Outcome]) -> dict[tuple[str, str], list[Outcome]]:
    grouped: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        grouped.setdefault((outcome.run.case, outcome.run.cc), []).append(outcome)
    return grouped


def _rates(outcome: Outcome, kind: str) -> list[float]:
    return [f["throughput_mbps"] for f in outcome.summary["flows"].values() if f["kind"] == kind]


def _row(outcomes: list[Outcome]) -> dict:
    """Seed-averaged headline numbers of one case and sender."""
    s = [o.summary for o in outcomes]
    ratios = _numbers(x["l_c_ratio"] for x in s)
    l_rates = _numbers(r for o in outcomes for r in _rates(o, "l4s"))
    c_rates = _numbers(r for o in outcomes for r in _rates(o, "classic"))
    return {
        "case": outcomes[0].run.case, "cc": outcomes[0].run.cc, "seeds": len(outcomes),
        "l_c_ratio": _mean(ratios),
        "l_c_ratio_min": min(ratios, default=math.nan),
        "l_c_ratio_max": max(ratios, default=math.nan),
        "jain_index": _mean(x["jain_index"] for x in s),
        "l_mbps": _mean(l_rates), "l_mbps_min": min(l_rates, default=math.nan), "l_mbps_max": max(l_rates, default=math.nan),
        "c_mbps": _mean(c_rates), "c_mbps_min": min(c_rates, default=math.nan), "c_mbps_max": max(c_rates, default=math.nan),
        "l_p99_ms": _mean(x["queues"]["L"]["p99_ms"] for x in s),
        "c_mean_ms": _mean(x["queues"]["C"]["mean_ms"] for x in s),
        "utilisation": _mean(x["utilisation"] for x in s),
        "ramp_s": _mean(o.ramp_s for o in outcomes),
    }


def _fmt(value: float, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _spread(row: dict, key: str) -> str:
    """'mean (min-max)' of a rate, or '-' when the case has no such flows."""
    if math.isnan(row[key]):
        return "-"
    return f"{row[key]:.1f} ({row[key + '_min']:.1f}-{row[key + '_max']:.1f})"


# --- sections: each returns its runs and a report over their outcomes ---------------------------


def plan_rtt_fairness(seeds: int, quick: bool) -> list[Run]:
    runs = []
    for rtt in REFERENCE_RATIO:
        long_rtt = rtt >= 50
        duration, warmup = ((40, 20) if long_rtt else (20, 8)) if quick else ((90, 40) if long_rtt else (30, 10))
        overrides = dumbbell(duration, warmup, 50, ("l4s", "l4s", 1, rtt), ("classic", "classic", 1, rtt))
        runs += each_sender("rtt-fairness", f"{rtt} ms", seeds, overrides, fair_share_mbps=25.0 if long_rtt else None)
    return runs


def report_rtt_fairness(outcomes: list[Outcome]) -> list[dict]:
    print("\nRTT fairness: 1 L4S + 1 Cubic over DualPI2 at 50 Mbps, measured after the ramp")
    print(f"{'RTT':>6} {'sender':>7} {'L:C':>6} {'min':>6} {'max':>6} {'ref':>5} {'in band':>8} "
          f"{'L p99 ms':>9} {'C mean ms':>10} {'util %':>7} {'ramp s':>7}")
    rows = []
    for (case, cc), group in _by_case(outcomes).items():
        row = _row(group)
        rtt = int(case.split()[0])
        row["reference"] = REFERENCE_RATIO[rtt]
        inside = REFERENCE_BAND[0] <= row["l_c_ratio"] <= REFERENCE_BAND[1]
        print(f"{case:>6} {cc:>7} {row['l_c_ratio']:>6.2f} {row['l_c_ratio_min']:>6.2f} {row['l_c_ratio_max']:>6.2f} "
              f"{row['reference']:>5.1f} {'yes' if inside else 'NO':>8} {row['l_p99_ms']:>9.2f} "
              f"{row['c_mean_ms']:>10.1f} {row['utilisation'] * 100:>7.1f} {_fmt(row['ramp_s'], '.1f'):>7}")
        rows.append(row)
    print(f"ramp s: first time the L4S flow's goodput over {RAMP_WINDOW_S:g} s reaches "
          f"{RAMP_SHARE:.0%} of its fair share (C/2)")
    return rows


RQ3_CASES = {
    "1 L4S + 1 Cubic": (1, 1),
    "1 L4S + 4 Cubic": (1, 4),
    "1 L4S + 8 Cubic": (1, 8),
    "2 L4S": (2, 0),
    "4 L4S": (4, 0),
    "8 L4S": (8, 0),
    "mixed 4 L4S + 4 Cubic": (4, 4),
}


def plan_rq3(seeds: int, quick: bool) -> list[Run]:
    duration, warmup = (20, 8) if quick else (60, 10)
    runs = []
    for case, (n_l, n_c) in RQ3_CASES.items():
        groups = [("l4s", "l4s", n_l, 20)] + ([("classic", "classic", n_c, 20)] if n_c else [])
        runs += each_sender("rq3", case, seeds, dumbbell(duration, warmup, 100, *groups))
    return runs


def report_rq3(outcomes: list[Outcome]) -> list[dict]:
    print("\nRQ3 wired fairness over DualPI2: 100 Mbps, 20 ms base RTT")
    print(f"{'case':<22} {'sender':>7} {'Jain':>6} {'L Mbps (min-max)':>20} {'C Mbps (min-max)':>20} "
          f"{'L:C':>6} {'L p99 ms':>9}")
    rows = []
    for (case, cc), group in _by_case(outcomes).items():
        row = _row(group)
        print(f"{case:<22} {cc:>7} {row['jain_index']:>6.3f} {_spread(row, 'l_mbps'):>20} "
              f"{_spread(row, 'c_mbps'):>20} {_fmt(row['l_c_ratio']):>6} "
              f"{row['l_p99_ms']:>9.2f}")
        rows.append(row)
    return rows


RTT_INDEPENDENCE_CASES = {
    "L4S 5 ms vs Cubic 80 ms": (100, 5, 80, 1),
    "L4S 80 ms vs Cubic 5 ms": (100, 80, 5, 1),
    "4 L4S vs 4 Cubic, 200 Mbps 5 ms": (200, 5, 5, 4),
}


def plan_rtt_independence(seeds: int, quick: bool) -> list[Run]:
    runs = []
    for case, (rate, l_rtt, c_rtt, count) in RTT_INDEPENDENCE_CASES.items():
        long_rtt = max(l_rtt, c_rtt) >= 50
        duration, warmup = ((30, 12) if quick else (60, 20)) if long_rtt else ((15, 5) if quick else (30, 10))
        runs += each_sender("rtt-independence", case, seeds, dumbbell(
            duration, warmup, rate, ("l4s", "l4s", count, l_rtt), ("classic", "classic", count, c_rtt)))
    return runs


def report_rtt_independence(outcomes: list[Outcome]) -> list[dict]:
    print("\nRTT independence over DualPI2: the L4S:Classic per-flow ratio, Prague beside DCTCP")
    print(f"{'case':<34} {'Prague L:C':>11} {'DCTCP L:C':>10} {'toward 1':>9} {'Prague L/C Mbps':>16} {'DCTCP L/C Mbps':>15}")
    grouped = _by_case(outcomes)
    rows = []
    for case in RTT_INDEPENDENCE_CASES:
        prague, dctcp = _row(grouped[(case, "prague")]), _row(grouped[(case, "dctcp")])
        closer = abs(math.log(prague["l_c_ratio"])) < abs(math.log(dctcp["l_c_ratio"]))
        print(f"{case:<34} {prague['l_c_ratio']:>11.2f} {dctcp['l_c_ratio']:>10.2f} {'yes' if closer else 'NO':>9} "
              f"{prague['l_mbps']:>7.1f}/{prague['c_mbps']:<8.1f} {dctcp['l_mbps']:>6.1f}/{dctcp['c_mbps']:<8.1f}")
        rows += [prague, dctcp]
    return rows


def catalogue_scenarios() -> list[str]:
    """Catalogue scenarios that carry L4S traffic through a DualPI2 bottleneck (read as data)."""
    names = []
    for name, path in list_scenarios().items():
        data = read_scenario_data(path)
        queue = (data.get("bottleneck") or {}).get("queue") or {}
        l4s = any(f.get("kind") == "l4s" for f in data.get("flows") or []) or any(
            v.get("transport") == "l4s" for v in data.get("video") or [])
        if l4s and queue.get("type", "dualpi2") == "dualpi2":
            names.append(name)
    return names


def plan_catalogue(seeds: int, quick: bool) -> list[Run]:
    return [run for name in catalogue_scenarios()
            for run in each_sender("catalogue", name, seeds, {}, scenario=name, max_duration_s=20 if quick else None)]


def report_catalogue(outcomes: list[Outcome]) -> list[dict]:
    print("\nCatalogue scenarios: L queue sojourn p99 with Prague vs DCTCP")
    print(f"{'scenario':<18} {'Prague p99 ms':>14} {'DCTCP p99 ms':>13} {'Prague <=':>10} {'Prague L:C':>11} {'DCTCP L:C':>10}")
    grouped = _by_case(outcomes)
    rows = []
    for name in dict.fromkeys(o.run.case for o in outcomes):
        prague, dctcp = _row(grouped[(name, "prague")]), _row(grouped[(name, "dctcp")])
        ok = prague["l_p99_ms"] <= dctcp["l_p99_ms"]
        print(f"{name:<18} {prague['l_p99_ms']:>14.3f} {dctcp['l_p99_ms']:>13.3f} {'yes' if ok else 'NO':>10} "
              f"{_fmt(prague['l_c_ratio']):>11} {_fmt(dctcp['l_c_ratio']):>10}")
        rows += [prague, dctcp]
    return rows


PLANS: dict[str, tuple[Callable[[int, bool], list[Run]], Callable[[list[Outcome]], list[dict]]]] = {
    "rtt-fairness": (plan_rtt_fairness, report_rtt_fairness),
    "rq3": (plan_rq3, report_rq3),
    "rtt-independence": (plan_rtt_independence, report_rtt_independence),
    "catalogue": (plan_catalogue, report_catalogue),
}


def abr_section(n_traces: int) -> list[dict]:
    try:
        trace_dir = trace_set_dir("valid-fcc")
    except TraceError:
        trace_dir = DEFAULT_TRACE_DIR
    traces = load_trace_set(trace_dir, limit=n_traces)
    chunk = evaluate(POLICIES, traces, default_manifest())
    print(f"\nABR: QoE_lin (first chunk excluded), video1, {len(traces)} traces of {trace_dir.name}")
    print(f"{'policy':<8}{'chunk-level':>13}{'packet-level':>14}{'gap %':>8}{'pkt rebuffer s':>16}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in POLICIES:
            packet = []
            rebuffer = []
            for i, trace in enumerate(traces):
                config = load_scenario(
                    "abr-fcc", {"bottleneck.trace": str(trace_dir / trace.name), "video": [
                        {"name": "client", "rtt_ms": 80, "abr": policy}]}
                )
                result = run_config(config, Path(tmp) / f"{policy}-{i}")
                if result.status != "ok":
                    raise RuntimeError(result.error)
                video = result.summary["video"]["client"]
                packet.append(video["qoe_lin_mean_after_first"])
                rebuffer.append(video["rebuffer_s"])
            c = chunk.loc[chunk["policy"] == policy, "qoe_lin"].mean()
            p = statistics.mean(packet)
            print(f"{policy:<8}{c:>13.3f}{p:>14.3f}{(p - c) / abs(c) * 100:>8.1f}{statistics.mean(rebuffer):>16.2f}")
            rows.append({"policy": policy, "chunk_qoe": float(c), "packet_qoe": p, "rebuffer_s": statistics.mean(rebuffer)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about a third), 2 ABR traces")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per case (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="simulations at a time (default 2)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--traces", type=int, default=None, help="valid-fcc traces in the ABR section (default 5, quick 2)")
    parser.add_argument("--json", type=Path, help="also write every table row to this JSON file")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    sections = args.only or list(SECTIONS)
    results: dict[str, list[dict]] = {}
    for name in sections:
        start = time.perf_counter()
        if name == "abr":
            results[name] = abr_section(args.traces or (2 if args.quick else 5))
        else:
            plan, report = PLANS[name]
            results[name] = report(run_all(plan(args.seeds, args.quick), args.jobs))
        print(f"({name}: {time.perf_counter() - start:.0f} s wall)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
