"""Headline metrics of a run, computed from its tables after the warm-up.

These are the numbers L4S evaluations report (RFC 9332 community practice):
per-queue sojourn percentiles, per-flow throughput, the L:C ratio, Jain's
fairness index, utilisation, and mark/drop rates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from emulation.config import SimulationConfig


def jain_index(values: list[float] | np.ndarray) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or not np.any(x):
        return float("nan")
    return float(x.sum() ** 2 / (x.size * np.square(x).sum()))


def _percentiles(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {"count": 0, "mean_ms": math.nan, "p50_ms": math.nan, "p99_ms": math.nan, "p999_ms": math.nan}
    p50, p99, p999 = np.percentile(samples, [50, 99, 99.9])
    return {
        "count": int(samples.size),
        "mean_ms": float(samples.mean()),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "p999_ms": float(p999),
    }


def summarise(
    config: SimulationConfig,
    queue: pd.DataFrame,
    sojourn: pd.DataFrame,
    flows: pd.DataFrame,
    capacity_bits: float,
    end_s: float | None = None,
) -> dict:
    """Summary of one run; ``capacity_bits`` is what the bottleneck could carry after the warm-up.

    ``end_s`` is when the run stopped if that was before ``duration_s`` (an agent ended it, or it failed).
    """
    warmup = config.probes.warmup_s
    end = config.duration_s if end_s is None else min(end_s, config.duration_s)
    window_s = end - warmup
    sj = sojourn[sojourn["time_s"] >= warmup]
    queues = {}
    for name in ("L", "C"):
        samples = sj.loc[sj["queue"] == name, "sojourn_ms"].to_numpy(dtype=np.float64)
        queues[name] = _percentiles(samples)

    q = queue[queue["time_s"] > warmup]
    departed_bits = float(q["departed_bytes"].sum()) * 8
    events = {c: int(q[c].sum()) for c in ("c_marks", "l_marks", "c_drops", "l_drops", "tail_drops")}
    n_l = max(queues["L"]["count"], 1)
    n_c = max(queues["C"]["count"], 1)

    per_flow = {}
    by_kind: dict[str, list[float]] = {"l4s": [], "classic": [], "udp": []}
    fw = flows[flows["time_s"] > warmup]
    for flow in config.all_flows():
        start = max(warmup, flow.start_s)
        stop = min(end, flow.stop_s if flow.stop_s is not None else end)
        rows = fw[(fw["flow"] == flow.name) & (fw["time_s"] > start) & (fw["time_s"] <= stop + 1e-9)]
        span = max(stop - start, 1e-9)
        mbps = float(rows["rx_bytes"].sum()) * 8 / span / 1e6
        per_flow[flow.name] = {"kind": flow.kind, "cc": flow.cc, "rtt_ms": flow.rtt_ms, "throughput_mbps": mbps,
                               "real": config.is_real(flow)}
        by_kind[flow.kind].append(mbps)

    tcp = by_kind["l4s"] + by_kind["classic"]
    mean_l = float(np.mean(by_kind["l4s"])) if by_kind["l4s"] else math.nan
    mean_c = float(np.mean(by_kind["classic"])) if by_kind["classic"] else math.nan
    return {
        "scenario": config.name,
        "seed": config.seed,
        "duration_s": config.duration_s,
        "warmup_s": warmup,
        "queue_type": config.bottleneck.queue.type,
        "queues": queues,
        "flows": per_flow,
        "l4s_mean_throughput_mbps": mean_l,
        "classic_mean_throughput_mbps": mean_c,
        "l_c_ratio": mean_l / mean_c if mean_c and not math.isnan(mean_l) and not math.isnan(mean_c) else math.nan,
        "jain_index": jain_index(tcp),
        "utilisation": departed_bits / capacity_bits if capacity_bits > 0 else math.nan,
        "departed_mbps": departed_bits / window_s / 1e6 if window_s > 0 else math.nan,
        "events": events,
        "l_mark_rate": events["l_marks"] / n_l,
        "c_mark_rate": events["c_marks"] / n_c,
        "c_drop_rate": events["c_drops"] / n_c,
        "mean_p_prime": float(q["p_prime"].mean()) if len(q) else math.nan,
    }
