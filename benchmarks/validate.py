"""``make validate``: the RTT-fairness matrix of L4S vs classic over DualPI2,
and classic ABR QoE in the chunk-level and the packet-level simulators.

For each base RTT, one DCTCP (ECT(1)) and one Cubic flow share a 50 Mbps
DualPI2 bottleneck; several seeds each. Printed beside the reference band from
published L4S evaluations (Prague vs Cubic over Linux DualPI2 at
50 Mbps: L4S:Classic 2.7 at 10 ms, 2.1 at 20 ms, 1.7 at 80 ms; sane band
about 0.8-2.7). Our L4S sender is DCTCP, not Prague (no RTT independence),
so a larger ratio at short RTT is expected.

ABR section: for N traces of valid-fcc (the shared data, else the shipped ones),
mean QoE_lin (first chunk excluded) of each classic ABR in the Pensieve-style
chunk-level simulator and in the packet-level ns-3 client over the same trace
(abr-fcc scenario, 80 ms RTT). See the README for why they differ.

    python -m benchmarks.validate [--seeds 3] [--duration 30] [--traces 5] [--skip-aqm] [--skip-abr]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from emulation.video.manifest import default_manifest
from emulation.video.traces import DEFAULT_TRACE_DIR, TraceError, load_trace_set, trace_set_dir
from testbed.chunksim import POLICIES, evaluate
from testbed.runner import run_config
from testbed.scenario import load_scenario

REFERENCE_RATIO = {10: 2.7, 20: 2.1, 80: 1.7}


def rtt_fairness(rtt_ms: float, seed: int, duration_s: float, out: Path) -> dict:
    config = load_scenario(
        "l4s-coexistence",
        {
            "seed": seed,
            "duration_s": duration_s,
            "probes.warmup_s": min(10.0, duration_s / 3),
            "bottleneck.rate_mbps": 50,
            "flows": [
                {"name": "l4s", "kind": "l4s", "rtt_ms": rtt_ms},
                {"name": "classic", "kind": "classic", "cc": "cubic", "rtt_ms": rtt_ms},
            ],
        },
    )
    result = run_config(config, out)
    if result.status != "ok":
        raise RuntimeError(result.error)
    return result.summary


def abr_section(n_traces: int) -> None:
    try:
        trace_dir = trace_set_dir("valid-fcc")
    except TraceError:
        trace_dir = DEFAULT_TRACE_DIR
    traces = load_trace_set(trace_dir, limit=n_traces)
    chunk = evaluate(POLICIES, traces, default_manifest())
    print(f"\nABR: QoE_lin (first chunk excluded), video1, {len(traces)} traces of {trace_dir.name}")
    print(f"{'policy':<8}{'chunk-level':>13}{'packet-level':>14}{'gap %':>8}{'pkt rebuffer s':>16}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--traces", type=int, default=5, help="valid-fcc traces in the ABR section")
    parser.add_argument("--skip-aqm", action="store_true")
    parser.add_argument("--skip-abr", action="store_true")
    args = parser.parse_args()
    if not args.skip_aqm:
        aqm_section(args.seeds, args.duration)
    if not args.skip_abr:
        abr_section(args.traces)


def aqm_section(seeds: int, duration_s: float) -> None:
    args = argparse.Namespace(seeds=seeds, duration=duration_s)
    print(f"RTT fairness, 1 DCTCP + 1 Cubic over DualPI2 at 50 Mbps, {args.duration:g} s, {args.seeds} seeds")
    header = f"{'RTT ms':>7} {'L:C mean':>9} {'min':>6} {'max':>6} {'ref':>5} {'band 0.8-2.7':>13} {'L p99 ms':>9} {'C mean ms':>10} {'util %':>7}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for rtt in REFERENCE_RATIO:
            runs = [rtt_fairness(rtt, seed, args.duration, Path(tmp) / f"{rtt}-{seed}") for seed in range(1, args.seeds + 1)]
            ratios = [r["l_c_ratio"] for r in runs]
            mean = statistics.mean(ratios)
            inside = "yes" if 0.8 <= mean <= 2.7 else "NO"
            l99 = statistics.mean(r["queues"]["L"]["p99_ms"] for r in runs)
            cmean = statistics.mean(r["queues"]["C"]["mean_ms"] for r in runs)
            util = statistics.mean(r["utilisation"] for r in runs) * 100
            print(f"{rtt:>7} {mean:>9.2f} {min(ratios):>6.2f} {max(ratios):>6.2f} {REFERENCE_RATIO[rtt]:>5.1f} "
                  f"{inside:>13} {l99:>9.2f} {cmean:>10.1f} {util:>7.1f}")


if __name__ == "__main__":
    main()
