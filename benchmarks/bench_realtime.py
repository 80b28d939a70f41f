"""Real mode on this machine: the highest bottleneck rate it carries in real
time, and how closely real hosts match the simulated ones.

Parts (``--part``, default all), each run like a user's ``testbed run``:

- ``floor``: a real-mode run with no traffic: the lateness this machine's
  scheduler alone causes (the baseline the other lateness figures compare to).
- ``rate``: one real Cubic flow and two simulated L4S flows through DualPI2 at
  each ``--rates`` value; lateness p99 / max and the real flow's goodput. The
  highest rate with lateness p99 under 1 ms is reported.
- ``tcp``: a real Cubic flow against a simulated Cubic flow through the same
  DualPI2 at equal RTT: throughput ratio real / simulated (target 0.8-1.25).
- ``video``: the real HTTP player under ``--abr mpc`` (an agent over the wire)
  on a trace-driven bottleneck, against the simulated player on the same trace
  and agent: QoE_lin ratio (target within 15 %).
- ``ecn``: codepoints in the real hosts' pcaps against their configuration,
  and CE marks on a real ECT(1) flow's packets in DualPI2's L queue.

Real-time figures depend on the other load on the machine: the load average
and the floor are printed with them. Needs root and /dev/net/tun.

    python -m benchmarks.bench_realtime [--part rate,tcp] [--rates 20,50,100] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from emulation.config import SimulationConfig
from emulation.video.traces import DEFAULT_TRACE_DIR
from testbed.runner import RunResult, run_config, with_agents

PARTS = ("floor", "rate", "tcp", "video", "ecn")
#: The video fidelity trace (shipped, mean 1.95 Mbit/s) and its length in chunks.
VIDEO_TRACE = "test_fcc_trace_216810_http---www.facebook.com_720_0"
VIDEO_CHUNKS = 12
LATENESS_TARGET_MS = 1.0


def _run(data: dict, out: Path, abr: str | None = None) -> RunResult:
    config = SimulationConfig.model_validate(data)
    config, agents = with_agents(config, None, abr)
    result = run_config(config, out, agents=agents)
    if result.status != "ok":
        raise RuntimeError(f"{out.name}: {result.error}")
    return result


def _dumbbell(name: str, rate_mbps: float, flows: list[dict], duration_s: float, mode: str = "real") -> dict:
    return {"name": name, "duration_s": duration_s, "emulation": {"mode": mode},
            "bottleneck": {"rate_mbps": rate_mbps, "delay_ms": 1, "queue": {"type": "dualpi2"}},
            "flows": flows, "probes": {"interval_ms": 10, "warmup_s": min(5.0, duration_s / 4)}}


def _health(result: RunResult) -> str:
    h = result.summary["realtime"]
    return (f"lateness p50 {h['lateness_p50_ms']:.3f} p99 {h['lateness_p99_ms']:.3f} max {h['lateness_max_ms']:.1f} ms, "
            f"{100 * h['late_fraction']:.2f} % of probe events > {h['late_threshold_ms']:g} ms ({h['scheduler']})")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} (1 / 5 min) on {os.cpu_count()} CPUs"


def part_floor(out: Path, duration_s: float) -> dict:
    result = _run(_dumbbell("rt-floor", 10, [], duration_s), out / "floor")
    print(f"floor (no traffic, {duration_s:g} s): {_health(result)}")
    return result.summary["realtime"]


def part_rate(out: Path, rates: list[float], duration_s: float) -> dict:
    rows = {}
    print(f"rate: 1 real Cubic + 2 simulated L4S flows, DualPI2, RTT 20 ms, {duration_s:g} s each")
    for rate in rates:
        flows = [{"name": "real-cubic", "kind": "classic", "cc": "cubic", "rtt_ms": 20, "real": True},
                 {"name": "l4s", "kind": "l4s", "count": 2, "rtt_ms": 20}]
        data = _dumbbell(f"rt-rate-{rate:g}", rate, flows, duration_s)
        data["emulation"]["hard_limit_ms"] = 1000
        try:
            result = _run(data, out / f"rate-{rate:g}")
        except RuntimeError as exc:
            print(f"  {rate:>6g} Mbps: failed: {exc}")
            rows[rate] = {"error": str(exc)}
            continue
        s = result.summary
        real = s["flows"]["real-cubic"]["throughput_mbps"]
        l4s = sum(f["throughput_mbps"] for n, f in s["flows"].items() if not f["real"])
        print(f"  {rate:>6g} Mbps: {_health(result)}; real Cubic {real:.1f}, simulated L4S {l4s:.1f} Mbps, "
              f"utilisation {100 * s['utilisation']:.1f} %")
        rows[rate] = {**s["realtime"], "real_mbps": real, "sim_mbps": l4s, "utilisation": s["utilisation"]}
    held = [r for r, row in rows.items() if (row.get("lateness_p99_ms") or 1e9) < LATENESS_TARGET_MS]
    best = max(held) if held else None
    print(f"  highest rate with lateness p99 < {LATENESS_TARGET_MS:g} ms: "
          + (f"{best:g} Mbps" if best is not None else "none of those tried"))
    return {"rates": rows, "highest_rate_mbps": best}


def part_tcp(out: Path, rate_mbps: float, duration_s: float, repeats: int) -> dict:
    flows = [{"name": "real-cubic", "kind": "classic", "cc": "cubic", "rtt_ms": 20, "real": True},
             {"name": "sim-cubic", "kind": "classic", "cc": "cubic", "rtt_ms": 20}]
    print(f"tcp: real Cubic vs simulated Cubic, DualPI2 at {rate_mbps:g} Mbps, RTT 20 ms, {duration_s:g} s, "
          f"{repeats} runs")
    runs = []
    for i in range(repeats):
        data = {**_dumbbell("rt-tcp", rate_mbps, flows, duration_s), "seed": i + 1}
        result = _run(data, out / f"tcp-{i + 1}")
        f = result.summary["flows"]
        real, sim = f["real-cubic"]["throughput_mbps"], f["sim-cubic"]["throughput_mbps"]
        print(f"  run {i + 1}: real {real:.2f} / simulated {sim:.2f} Mbps = {real / sim:.3f}; {_health(result)}")
        runs.append({"real_mbps": real, "sim_mbps": sim, "ratio": real / sim, "realtime": result.summary["realtime"]})
    ratio = sum(r["real_mbps"] for r in runs) / sum(r["sim_mbps"] for r in runs)
    print(f"  real / simulated over all runs: {ratio:.3f} (target 0.8-1.25)")
    return {"ratio": ratio, "runs": runs}


def part_video(out: Path, abr: str) -> dict:
    chunk_s = 4.0
    duration_s = VIDEO_CHUNKS * chunk_s + 20
    data = {"name": "rt-video", "duration_s": duration_s,
            "bottleneck": {"rate_mbps": 10, "delay_ms": 1, "queue": {"type": "fifo", "params": {"MaxSize": "60p"}},
                           "trace": str(DEFAULT_TRACE_DIR / VIDEO_TRACE)},
            "video": [{"name": "client", "rtt_ms": 80, "abr": abr, "n_chunks": VIDEO_CHUNKS, "real": True}],
            "probes": {"interval_ms": 100, "warmup_s": 0}}
    qoe = {}
    for mode in ("sim", "real"):
        result = _run({**data, "emulation": {"mode": mode}}, out / f"video-{mode}", abr=abr)
        v = result.summary["video"]["client"]
        qoe[mode] = v
        extra = f"; {_health(result)}" if mode == "real" else ""
        print(f"video {mode:<4}: QoE_lin {v['qoe_lin_mean_after_first']:.3f} (first chunk excluded), bitrate "
              f"{v['avg_bitrate_bps'] / 1e3:.0f} kbps, rebuffer {v['rebuffer_s']:.2f} s, "
              f"{v['chunks_played']}/{v['chunks_total']} chunks{extra}")
    ratio = qoe["real"]["qoe_lin_mean_after_first"] / qoe["sim"]["qoe_lin_mean_after_first"]
    print(f"video: real / simulated QoE_lin {ratio:.3f} under --abr {abr} on {VIDEO_TRACE} (target 0.85-1.15)")
    return {"ratio": ratio, "sim": qoe["sim"], "real": qoe["real"]}


def part_ecn(out: Path, duration_s: float) -> dict:
    flows = [{"name": "cubic-ecn", "kind": "classic", "cc": "cubic", "ecn": True, "rtt_ms": 20, "real": True},
             {"name": "bbr", "kind": "classic", "cc": "bbr", "rtt_ms": 20, "real": True},
             {"name": "udp-ect1", "kind": "udp", "rate_mbps": 2, "ecn": True, "rtt_ms": 20, "real": True},
             {"name": "l4s", "kind": "l4s", "rtt_ms": 20}]
    result = _run(_dumbbell("rt-ecn", 20, flows, duration_s), out / "ecn")
    rows = {}
    print("ecn: data packets leaving each real sender, and CE marks arriving at its receiver")
    for name, entry in result.summary["real"]["flows"].items():
        sent, received = entry["pcap"]["sender_tap"], entry["pcap"]["receiver_tap"]
        # TCP retransmissions leave Not-ECT (RFC 3168 6.1.5): an ECT codepoint is expected on new data only.
        expected = entry["expected_ecn"]
        new_data = sent["data_packets"] - (sent["retransmissions"] if expected != "not_ect" else 0)
        share = sent[expected] / max(new_data, 1)
        print(f"  {name:<10} configured {entry['expected_ecn']:<8} sent: {sent['data_packets']} data packets, "
              f"{100 * share:.1f} % of new data {entry['expected_ecn']}, {sent['retransmissions']} retransmitted; "
              f"received: {received['ce']} CE of {received['data_packets']}")
        rows[name] = {"expected": entry["expected_ecn"], "share_as_configured": share, "ce": received["ce"],
                      "received": received["data_packets"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--rates", default="25,50,100,150", help="bottleneck rates of the rate part (Mbit/s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each rate / ecn run")
    parser.add_argument("--tcp-rate", type=float, default=20.0, help="bottleneck rate of the tcp part (Mbit/s)")
    parser.add_argument("--tcp-duration", type=float, default=30.0)
    parser.add_argument("--tcp-repeats", type=int, default=3, help="runs of the tcp part (their ratio varies)")
    parser.add_argument("--abr", default="mpc", help="ABR agent policy of the video part")
    parser.add_argument("--out", type=Path, help="keep the runs and results.json here (default: a temporary dir)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"{_load()} at start; {time.strftime('%Y-%m-%d %H:%M')}")
        results: dict = {"load_at_start": os.getloadavg()}
        if "floor" in parts:
            results["floor"] = part_floor(out, 5.0)
        if "rate" in parts:
            results["rate"] = part_rate(out, [float(r) for r in args.rates.split(",")], args.duration)
        if "tcp" in parts:
            results["tcp"] = part_tcp(out, args.tcp_rate, args.tcp_duration, args.tcp_repeats)
        if "video" in parts:
            results["video"] = part_video(out, args.abr)
        if "ecn" in parts:
            results["ecn"] = part_ecn(out, args.duration)
        results["load_at_end"] = os.getloadavg()
        print(f"{_load()} at end")
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
