"""Comparative reports over run directories: ``summary.csv``, a Markdown table and ``index.html`` with plots.

Runs are grouped by condition (scenario and swept parameters) and policy;
seeds (and traces, which are samples of one condition) are the repetitions
the 95 % confidence intervals are taken over. Failed runs are counted and
listed with their errors, never left out. Plots come only from tables the runs
actually have (a scenario without video gets no video plots).
"""

from __future__ import annotations

import html
import importlib.metadata
import math
import platform
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from testbed.grid import param_tag
from testbed.store import StoredRun, load_run

#: Two-sided 95 % quantiles of Student's t, df 1..30; above 30 a Cornish-Fisher expansion is exact to 1e-4.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054

#: Headline metrics: column -> label with unit (per-kind throughput and shadow agreement are added as found).
METRICS: dict[str, str] = {
    "l_sojourn_p50_ms": "L sojourn p50 (ms)",
    "l_sojourn_p99_ms": "L sojourn p99 (ms)",
    "c_sojourn_p50_ms": "C sojourn p50 (ms)",
    "c_sojourn_p99_ms": "C sojourn p99 (ms)",
    "l_c_ratio": "L:C throughput ratio",
    "jain_index": "Jain index",
    "utilisation": "utilisation",
    "qoe_lin_mean_after_first": "QoE_lin per chunk",
    "bitrate_kbps": "bitrate (kbps)",
    "rebuffer_ratio": "rebuffer ratio",
    "switches": "quality switches",
    "fallback_rate": "fallback rate",
    "realtime_lateness_p99_ms": "real-time lateness p99 (ms)",
    "realtime_lateness_max_ms": "real-time lateness max (ms)",
    "realtime_late_events": "real-time events late > 1 ms",
}

PLOT_DPI = 100
#: File name endings of the plots, ``<scenario>-<params>-<kind>.png``.
PLOT_KINDS = ("sojourn-cdf", "throughput", "probabilities", "qoe", "video", "decision-latency")


def t_quantile_975(df: int) -> float:
    """t such that P(|T_df| <= t) = 0.95."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96,
         (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


def mean_ci95(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95 % confidence interval (t-distribution; NaN below 2 values) and the count."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    if x.size == 1:
        return float(x[0]), math.nan, 1
    return float(x.mean()), t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size), int(x.size)


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _decision_metrics(run_dir: Path) -> dict[str, float]:
    """Acting decision latency per control, fallback rate, and each shadow's agreement with the acting policy."""
    paths = sorted((run_dir / "agents").glob("*/decisions.parquet"))
    if not paths:
        return {}
    frame = pd.concat([_read_decisions(p) for p in paths], ignore_index=True)
    metrics: dict[str, float] = {}
    frame = frame[~frame["done"]]  # the episode's last observation gets no decision
    acting = frame[frame["role"] == "acting"]
    for control, rows in acting.groupby("control"):
        metrics[f"{control}_decision_p50_ms"] = float(np.nanpercentile(rows["decision_ms"], 50))
        metrics[f"{control}_decision_p99_ms"] = float(np.nanpercentile(rows["decision_ms"], 99))
    if len(acting):
        metrics["fallback_rate"] = float(acting["fallback"].mean())
    shadow = frame[frame["role"] == "shadow"]
    if len(shadow):
        pairs = shadow.merge(acting, on=["control_point", "step"], suffixes=("", "_acting"))
        for name, rows in pairs.groupby("policy"):
            same = [len(a) == len(b) and np.allclose(a, b, rtol=1e-9, atol=1e-12)
                    for a, b in zip(rows["action"], rows["action_acting"], strict=True)]
            metrics[f"shadow_agreement_{name}"] = float(np.mean(same)) if same else math.nan
    return metrics


def _read_decisions(path: Path) -> pd.DataFrame:
    table = pq.read_table(path, columns=["control_point", "step", "policy", "role", "action", "decision_ms",
                                        "fallback", "done"])
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    frame = table.to_pandas()
    frame["control"] = meta.get("control") or ("aqm" if path.parent.name == "aqm" else "abr")
    return frame


def run_metrics(run: StoredRun) -> dict[str, float]:
    """The headline numbers of one ok run, from summary.json and the decision logs."""
    s = run.summary or {}
    queues = s.get("queues") or {}
    metrics = {
        f"{q.lower()}_sojourn_{p}_ms": _num((queues.get(q) or {}).get(f"{p}_ms")) for q in ("L", "C") for p in ("p50", "p99")
    }
    kinds: dict[str, list[float]] = {}
    for flow in (s.get("flows") or {}).values():
        kind = f"real_{flow['kind']}" if flow.get("real") else flow["kind"]  # real hosts beside simulated ones
        kinds.setdefault(kind, []).append(_num(flow.get("throughput_mbps")))
    metrics.update({f"throughput_{kind}_mbps": float(np.nanmean(v)) for kind, v in sorted(kinds.items())})
    metrics.update({k: _num(s.get(k)) for k in ("l_c_ratio", "jain_index", "utilisation")})
    metrics.update({k: _num(v) for k, v in sorted(s.items()) if k.endswith("_rate") and isinstance(v, (int, float))})
    video = list((s.get("video") or {}).values())
    if video:
        def over_clients(key: str, scale: float = 1.0) -> float:
            values = [_num(v.get(key)) * scale for v in video]
            return float(np.nanmean(values)) if not all(math.isnan(x) for x in values) else math.nan

        metrics["qoe_lin_mean_after_first"] = over_clients("qoe_lin_mean_after_first")
        metrics["bitrate_kbps"] = over_clients("avg_bitrate_bps", 1e-3)
        metrics["rebuffer_ratio"] = over_clients("rebuffer_ratio")
        metrics["switches"] = over_clients("switches")
    if realtime := s.get("realtime"):
        metrics.update({f"realtime_{k}": _num(realtime.get(k))
                        for k in ("lateness_p99_ms", "lateness_max_ms", "late_events")})
    metrics.update(_decision_metrics(run.run_dir))
    return metrics


def metric_label(column: str) -> str:
    if column in METRICS:
        return METRICS[column]
    if m := re.fullmatch(r"throughput_real_(\w+)_mbps", column):
        return f"{m[1]} flow throughput, real hosts (Mbps)"
    if m := re.fullmatch(r"throughput_(\w+)_mbps", column):
        return f"{m[1]} flow throughput (Mbps)"
    if m := re.fullmatch(r"(aqm|abr)_decision_(p\d+)_ms", column):
        return f"{m[1]} decision latency {m[2]} (ms, wall)"
    if m := re.fullmatch(r"shadow_agreement_(.+)", column):
        return f"shadow {m[1]} agreement"
    if column.endswith("_rate"):
        return column.removesuffix("_rate").replace("_", " ") + " rate (per packet)"
    return column


#: Order of metric families in tables: queue, throughput, fairness, events, video, decisions, shadows, real time.
_FAMILIES = (r"_sojourn_", r"^throughput_", r"^(l_c_ratio|jain_index|utilisation)$", r"(mark|drop)_rate$",
             r"^(qoe|bitrate|rebuffer|switches)", r"_decision_|^fallback_rate$", r"^shadow_", r"^realtime_")


def _metric_order(columns: Iterable[str]) -> list[str]:
    """Families in the order a reader scans them; the named metrics in METRICS order, others by name."""
    def key(col: str) -> tuple[int, int, str]:
        family = next((i for i, pattern in enumerate(_FAMILIES) if re.search(pattern, col)), len(_FAMILIES))
        return family, list(METRICS).index(col) if col in METRICS else -1, col

    return sorted(dict.fromkeys(columns), key=key)


@dataclass
class Group:
    """The runs of one policy under one condition."""

    scenario: str
    condition: str  # parameter tag of the condition ("default" when nothing was swept)
    policy: str
    runs: list[StoredRun] = field(default_factory=list)

    @property
    def ok(self) -> list[StoredRun]:
        return sorted((r for r in self.runs if r.state == "ok"), key=_sample_key)

    @property
    def failed(self) -> list[StoredRun]:
        return [r for r in self.runs if r.state != "ok"]


def _sample_key(run: StoredRun) -> tuple[str, int]:
    return str(run.params.get("bottleneck.trace") or ""), run.seed or 0


def _sample_label(run: StoredRun) -> str:
    """What distinguishes runs of one group: the trace (if any) and the seed."""
    trace = run.params.get("bottleneck.trace")
    return (f"{Path(str(trace)).name[:24]} " if trace else "") + f"seed {run.seed}"


def group_runs(runs: Sequence[StoredRun]) -> list[Group]:
    groups: dict[tuple[str, str, str], Group] = {}
    for run in runs:
        key = (run.scenario, param_tag(run.condition), run.policy)
        groups.setdefault(key, Group(*key)).runs.append(run)
    return list(groups.values())


def summarise(groups: Sequence[Group], per_run: dict[Path, dict[str, float]]) -> pd.DataFrame:
    """One row per group: runs ok / failed, then mean and 95 % CI half-width of every metric any run has."""
    columns = _metric_order(c for metrics in per_run.values() for c in metrics)
    rows = []
    for g in groups:
        row: dict[str, object] = {"scenario": g.scenario, "params": g.condition, "policy": g.policy,
                                  "runs_ok": len(g.ok), "runs_failed": len(g.failed)}
        for col in columns:
            mean, ci, _ = mean_ci95(per_run[r.run_dir].get(col, math.nan) for r in g.ok)
            row[f"{col}_mean"], row[f"{col}_ci95"] = mean, ci
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(mean: float, ci: float) -> str:
    if math.isnan(mean):
        return "-"
    text = f"{mean:.4g}"
    return text if math.isnan(ci) else f"{text} ± {ci:.2g}"


def _conditions(summary: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    return [(s, p, rows) for (s, p), rows in summary.groupby(["scenario", "params"], sort=False)]


def _table_cells(rows: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Metrics as rows, policies as columns: fits a terminal for a handful of policies."""
    header = ["metric", *rows["policy"]]
    body = [["runs ok / failed", *(f"{o} / {f}" for o, f in zip(rows["runs_ok"], rows["runs_failed"], strict=True))]]
    metrics = [c.removesuffix("_mean") for c in rows.columns if c.endswith("_mean")]
    for m in metrics:
        if rows[f"{m}_mean"].notna().any():
            body.append([metric_label(m), *(_fmt(a, b) for a, b in zip(rows[f"{m}_mean"], rows[f"{m}_ci95"], strict=True))])
    return header, body


def markdown(summary: pd.DataFrame, failed: Sequence[StoredRun]) -> str:
    """The summary as Markdown tables (mean ± 95 % CI half-width), one per condition, then the failed runs."""
    out = []
    for scenario, params, rows in _conditions(summary):
        out.append(f"### {scenario}" + ("" if params == "default" else f" ({params})"))
        header, body = _table_cells(rows)
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        out.append("")
    if failed:
        out.append("### Failed runs")
        out += [f"- `{r.run_dir}` ({r.policy}, {_sample_label(r)}): {_first_line(r.error)}" for r in failed]
    return "\n".join(out).rstrip() + "\n"


def _first_line(text: str | None) -> str:
    return (text or "unknown error").strip().splitlines()[0] if (text or "").strip() else "unknown error"


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    _pyplot().close(fig)
    return path


def _read(run: StoredRun, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    path = run.run_dir / name
    if not path.exists():
        return None
    frame = pd.read_parquet(path, columns=columns)
    return frame if len(frame) else None


def plot_sojourn_cdf(groups: Sequence[Group], path: Path) -> Path | None:
    """Per-queue sojourn CDFs, all packets of all seeds pooled per policy."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for g in groups:
        frames = [f for r in g.ok if (f := _read(r, "sojourn.parquet", ["queue", "sojourn_ms"])) is not None]
        if frames:
            pooled = pd.concat(frames)
            for queue, rows in pooled.groupby("queue"):
                curves.setdefault(str(queue), {})[g.policy] = rows["sojourn_ms"].to_numpy()
    queues = [q for q in ("L", "C") if q in curves]
    if not queues:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(queues), figsize=(5.2 * len(queues), 3.6), squeeze=False)
    levels = np.linspace(0, 1, 401)
    for ax, queue in zip(axes[0], queues, strict=True):
        for policy, sojourn_ms in curves[queue].items():
            ax.plot(np.quantile(sojourn_ms, levels), levels, label=policy)
        ax.set_title(f"{queue} queue")
        ax.set_xlabel("sojourn time (ms)")
        ax.set_ylabel("CDF (fraction of packets)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _shade_warmup(ax, run: StoredRun) -> None:
    """Grey out the warm-up the summary excludes, so plots and numbers can be read together."""
    path = run.run_dir / "config.yaml"
    warmup_s = float(((yaml.safe_load(path.read_text()) or {}).get("probes") or {}).get("warmup_s") or 0.0)
    if warmup_s > 0:
        ax.axvspan(0.0, warmup_s, color="0.9", zorder=0, label="warm-up (not in the summary)")


def _representative(groups: Sequence[Group], table: str) -> list[tuple[Group, StoredRun, pd.DataFrame]]:
    """The first ok run (lowest trace/seed) of each policy that has ``table``."""
    found = []
    for g in groups:
        for run in g.ok:
            frame = _read(run, table)
            if frame is not None:
                found.append((g, run, frame))
                break
    return found


def plot_throughput(groups: Sequence[Group], path: Path, bin_s: float = 0.1) -> Path | None:
    """Per-flow goodput over time of one run per policy, averaged into ``bin_s`` bins."""
    found = _representative(groups, "flows.parquet")
    if not found:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(found), 1, figsize=(9, 2.6 * len(found)), squeeze=False, sharex=True)
    for ax, (g, run, flows) in zip(axes[:, 0], found, strict=True):
        flows = flows.assign(bin_s=(np.floor(flows["time_s"] / bin_s - 1e-9) + 1) * bin_s)
        series = flows.groupby(["bin_s", "flow"])["goodput_bps"].mean().unstack("flow") / 1e6
        for flow in series.columns:
            ax.plot(series.index, series[flow], label=flow, linewidth=1)
        _shade_warmup(ax, run)
        ax.set_title(f"{g.policy} ({_sample_label(run)})", fontsize="medium")
        ax.set_ylabel("goodput (Mbps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=min(5, len(series.columns) + 1), loc="upper right")
    axes[-1, 0].set_xlabel(f"simulated time (s), {bin_s * 1e3:.0f} ms bins")
    return _save(fig, path)


def plot_probabilities(groups: Sequence[Group], path: Path) -> Path | None:
    """DualPI2's p', p_CL and p_C over time, one run per policy (only queues that have them)."""
    found = [(g, r, q) for g, r, q in _representative(groups, "queue.parquet") if q["p_prime"].notna().any()]
    if not found:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(found), 1, figsize=(9, 2.6 * len(found)), squeeze=False, sharex=True)
    for ax, (g, run, queue) in zip(axes[:, 0], found, strict=True):
        for column, label in (("p_prime", "p' (base)"), ("p_cl", "p_CL (L coupled)"), ("p_c", "p_C (classic)")):
            ax.plot(queue["time_s"], queue[column], label=label, linewidth=1)
        _shade_warmup(ax, run)
        ax.set_title(f"{g.policy} ({_sample_label(run)})", fontsize="medium")
        ax.set_ylabel("probability")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper right")
    axes[-1, 0].set_xlabel("simulated time (s)")
    return _save(fig, path)


def plot_qoe(groups: Sequence[Group], per_run: dict[Path, dict[str, float]], path: Path) -> Path | None:
    """QoE_lin per run (trace / seed) for each policy: where a policy wins and where it loses."""
    points = {g.policy: {_sample_label(r): per_run[r.run_dir].get("qoe_lin_mean_after_first", math.nan) for r in g.ok}
              for g in groups}
    samples = sorted({s for p in points.values() for s, v in p.items() if not math.isnan(v)})
    if not samples:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(samples) + 3), 3.8))
    x = np.arange(len(samples))
    for i, (policy, values) in enumerate(points.items()):
        offset = (i - (len(points) - 1) / 2) * 0.12
        ax.plot(x + offset, [values.get(s, math.nan) for s in samples], "o", label=policy)
    ax.set_xticks(x, samples, rotation=30 if len(samples) > 4 else 0, ha="right" if len(samples) > 4 else "center",
                  fontsize="small")
    ax.set_xlim(-0.5, len(samples) - 0.5)
    ax.set_xlabel("run (trace, seed)")
    ax.set_ylabel("QoE_lin per chunk\n(mean, first chunk excluded)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_video_timelines(groups: Sequence[Group], path: Path) -> Path | None:
    """Chosen bitrate and playback buffer per chunk over time, one run per policy."""
    found = _representative(groups, "video.parquet")
    if not found:
        return None
    plt = _pyplot()
    fig, (ax_rate, ax_buf) = plt.subplots(2, 1, figsize=(9, 5.6), sharex=True)
    for g, run, video in found:
        for client, rows in video.groupby("client"):
            who = g.policy if video["client"].nunique() == 1 else f"{g.policy} {client}"
            label = f"{who} ({_sample_label(run)})"
            # Each chunk's bitrate holds from its request to the next request; the last ends at its last byte.
            times_s = [*rows["request_s"], rows["last_byte_s"].iloc[-1]]
            kbps = [*(rows["bitrate_bps"] / 1e3), rows["bitrate_bps"].iloc[-1] / 1e3]
            ax_rate.step(times_s, kbps, where="post", label=label)
            ax_buf.plot(rows["last_byte_s"], rows["buffer_after_s"], marker=".", label=label)
    ax_rate.set_ylabel("chunk bitrate (kbps)")
    ax_buf.set_ylabel("buffer after chunk (s)")
    ax_buf.set_xlabel("simulated time (s): bitrate from each request, buffer at each chunk's last byte")
    for ax in (ax_rate, ax_buf):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax_rate.set_title("one run per policy", fontsize="medium")
    return _save(fig, path)


def plot_decision_latency(groups: Sequence[Group], path: Path) -> Path | None:
    """CDF of every policy's decision time (acting and shadow), all runs pooled."""
    curves: dict[str, np.ndarray] = {}
    for g in groups:
        frames = [_read_decisions(p) for r in g.ok for p in sorted((r.run_dir / "agents").glob("*/decisions.parquet"))]
        if frames:
            pooled = pd.concat(frames)
            pooled = pooled[~pooled["done"]]
            for (control, name, role), rows in pooled.groupby(["control", "policy", "role"]):
                curves[f"{g.policy}: {control} {name} ({role})"] = rows["decision_ms"].to_numpy()
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    levels = np.linspace(0, 1, 401)
    for label, decision_ms in curves.items():
        ax.plot(np.maximum(np.quantile(decision_ms, levels), 1e-4), levels, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("decision time (ms, wall clock, log scale)")
    ax.set_ylabel("CDF (fraction of decisions)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, path)


# ---------------------------------------------------------------- the page


def software_versions() -> dict[str, str]:
    """Versions that decide what a run computes; read from package metadata (no heavy imports)."""
    versions = {"python": platform.python_version()}
    for package in ("ns3", "numpy", "pandas", "pyarrow", "matplotlib", "torch", "transformers", "peft", "ray"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.failed { color: #a00; }
"""

#: Sets body[data-images] to "loaded N" once every image has decoded, "broken K of N" otherwise (checked by tests).
_IMAGE_CHECK = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  document.body.setAttribute("data-images",
    broken.length ? "broken " + broken.length + " of " + images.length : "loaded " + images.length);
});
</script>
"""


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "x"


@dataclass
class ReportPaths:
    out_dir: Path
    summary_csv: Path
    index_html: Path
    markdown: str
    plots: list[Path]
    runs_ok: int
    runs_failed: int


def build_report(run_dirs: Iterable[Path], out_dir: Path) -> ReportPaths:
    """Summarise ``run_dirs`` into ``out_dir``: summary.csv, index.html and the PNG plots beside it."""
    runs = [load_run(Path(d)) for d in run_dirs]
    if not runs:
        raise ValueError("no runs to report on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind in PLOT_KINDS:
        for old in out_dir.glob(f"*-{kind}.png"):
            old.unlink()  # plots of an earlier report that this one may not redraw
    groups = group_runs(runs)
    per_run = {r.run_dir: run_metrics(r) for g in groups for r in g.ok}
    summary = summarise(groups, per_run)
    failed = [r for g in groups for r in g.failed]
    csv_path = out_dir / "summary.csv"
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    summary.to_csv(tmp, index=False)
    tmp.replace(csv_path)
    text = markdown(summary, failed)

    sections, plots = [], []
    for scenario, params, rows in _conditions(summary):
        members = [g for g in groups if (g.scenario, g.condition) == (scenario, params)]
        title = scenario + ("" if params == "default" else f" ({params})")
        parts = [f"<h2>{html.escape(title)}</h2>", _html_table(*_table_cells(rows)),
                 "<p>mean ± half-width of the 95 % confidence interval (t-distribution) over seeds and traces</p>"]
        prefix = _slug(f"{scenario}-{params}")
        path = {kind: out_dir / f"{prefix}-{kind}.png" for kind in PLOT_KINDS}
        drawn = [
            ("Queue sojourn time", plot_sojourn_cdf(members, path["sojourn-cdf"])),
            ("Per-flow goodput over time", plot_throughput(members, path["throughput"])),
            ("DualPI2 probabilities over time", plot_probabilities(members, path["probabilities"])),
            ("QoE per run", plot_qoe(members, per_run, path["qoe"])),
            ("Bitrate and buffer", plot_video_timelines(members, path["video"])),
            ("Decision latency", plot_decision_latency(members, path["decision-latency"])),
        ]
        for heading, plot in drawn:
            if plot is not None:
                plots.append(plot)
                parts.append(f"<h3>{html.escape(heading)}</h3>"
                             f'<img src="{html.escape(plot.name)}" alt="{html.escape(heading)}">')
        config = next((r.run_dir / "config.yaml" for g in members for r in g.runs
                       if (r.run_dir / "config.yaml").exists()), None)
        if config is not None:
            parts.append(f"<details><summary>configuration ({html.escape(str(config))})</summary>"
                         f"<pre>{html.escape(config.read_text())}</pre></details>")
        sections.append("\n".join(parts))
    if failed:
        body = [[str(r.run_dir), r.policy, _sample_label(r), _first_line(r.error)] for r in failed]
        sections.append('<h2 class="failed">Failed runs</h2>'
                        + _html_table(["run directory", "policy", "run", "error"], body))
    versions = software_versions()
    sections.append("<h2>Software</h2>" + _html_table(["package", "version"], [[k, v] for k, v in versions.items()]))
    n_ok = sum(len(g.ok) for g in groups)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Testbed report</title>"
            f"<style>{_CSS}</style></head>\n<body data-images=\"pending\">\n<h1>Testbed report</h1>\n"
            f"<p>{n_ok} runs ok, {len(failed)} failed; generated {time.strftime('%Y-%m-%d %H:%M:%S')}. "
            f"Numbers: <a href=\"summary.csv\">summary.csv</a>.</p>\n"
            + "\n".join(sections) + _IMAGE_CHECK + "</body></html>\n")
    index = out_dir / "index.html"
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text(page)
    tmp.replace(index)
    return ReportPaths(out_dir, csv_path, index, text, plots, n_ok, len(failed))
