"""Reports over real runs: the numbers in summary.csv, the plots, the page rendering
in headless Chromium with every image loaded, and rebuilding a report from a tree."""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from emulation.rundir import read_json
from testbed.cli import main
from testbed.compare import compare
from testbed.report import mean_ci95, t_quantile_975
from testbed.store import load_run

ACTING = "aqm=fixed+abr=bba+shadow=mpc+shadow=pi2"
#: A 20 Mbps DualPI2 bottleneck shared by one L4S and one classic bulk flow and a video client.
MIXED = {
    "duration_s": 4,
    "bottleneck.rate_mbps": 20,
    "flows": [{"name": "bulk-l4s", "kind": "l4s", "rtt_ms": 20}, {"name": "bulk-classic", "kind": "classic", "rtt_ms": 20}],
    "video": [{"name": "v", "rtt_ms": 20}],
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    log = io.StringIO()
    report = compare("l4s-coexistence", ["dualpi2", ACTING], "1..2", out, MIXED, jobs=2, stream=log)
    assert (report.runs_ok, report.runs_failed) == (4, 0), log.getvalue()
    return out, report


def test_t_quantiles_and_intervals():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(9) == pytest.approx(2.262, abs=1e-3)
    for df, expected in ((31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799), (10**6, 1.9600)):
        assert t_quantile_975(df) == pytest.approx(expected, abs=2e-4)
    mean, half, n = mean_ci95([1.0, 2.0, 3.0, float("nan"), None])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.3027 * 1.0 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_ci95([5.0])[1]) and mean_ci95([])[2] == 0


def test_summary_has_every_headline_metric(compared):
    out, report = compared
    summary = pd.read_csv(report.summary_csv).set_index("policy")
    expected = ["l_sojourn_p50_ms", "l_sojourn_p99_ms", "c_sojourn_p50_ms", "c_sojourn_p99_ms",
                "throughput_l4s_mbps", "throughput_classic_mbps", "l_c_ratio", "jain_index", "utilisation",
                "l_mark_rate", "c_mark_rate", "c_drop_rate", "qoe_lin_mean_after_first", "bitrate_kbps",
                "rebuffer_ratio", "switches", "aqm_decision_p50_ms", "aqm_decision_p99_ms", "abr_decision_p50_ms",
                "abr_decision_p99_ms", "fallback_rate", "shadow_agreement_mpc", "shadow_agreement_pi2"]
    for metric in expected:
        assert f"{metric}_mean" in summary.columns and f"{metric}_ci95" in summary.columns, metric
        assert np.isfinite(summary.loc[ACTING, f"{metric}_mean"]), metric
    assert math.isnan(summary.loc["dualpi2", "shadow_agreement_mpc_mean"])

    # Shadow agreement: the fraction of steps where the shadow chose what the acting policy did.
    agreement = []
    for seed in (1, 2):
        d = pd.read_parquet(out / "l4s-coexistence" / ACTING / "default" / str(seed) / "agents" / "abr-v"
                            / "decisions.parquet")
        d = d[~d["done"]]
        acting = d[d["role"] == "acting"].set_index("step")["action"]
        shadow = d[d["policy"] == "mpc"].set_index("step")["action"]
        agreement.append(np.mean([list(shadow[s]) == list(acting[s]) for s in shadow.index]))
    assert summary.loc[ACTING, "shadow_agreement_mpc_mean"] == pytest.approx(np.mean(agreement))

    bitrate = [read_json(out / "l4s-coexistence" / "dualpi2" / "default" / str(s) / "summary.json")["video"]["v"]
               ["avg_bitrate_bps"] / 1e3 for s in (1, 2)]
    assert summary.loc["dualpi2", "bitrate_kbps_mean"] == pytest.approx(np.mean(bitrate))
    assert re.search(r"\| shadow mpc agreement \| - \| [0-9.]+", report.markdown)


def _chromium_dom(index) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    profile = index.parent.parent / f"chromium-profile-{index.parent.name}"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--dump-dom", index.as_uri()]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_page_renders_with_every_plot(compared, tmp_path):
    _, report = compared
    names = {p.name for p in report.plots}
    assert names == {f"l4s-coexistence-default-{kind}.png" for kind in
                     ("sojourn-cdf", "throughput", "probabilities", "qoe", "video", "decision-latency")}
    page = report.index_html.read_text()
    for heading in ("Queue sojourn time", "Per-flow goodput over time", "DualPI2 probabilities over time",
                    "QoE per run", "Bitrate and buffer", "Decision latency", "configuration", "Software"):
        assert heading in page, heading
    for package in ("python", "ns3", "numpy", "pandas", "torch", "transformers", "peft"):
        assert f"<td>{package}</td>" in page, package
    dom = _chromium_dom(report.index_html)
    assert f'data-images="loaded {len(names)}"' in dom

    # The check can fail: the same page with one plot missing reports it.
    broken = tmp_path / "broken"
    shutil.copytree(report.out_dir, broken)
    (broken / "l4s-coexistence-default-qoe.png").unlink()
    assert f'data-images="broken 1 of {len(names)}"' in _chromium_dom(broken / "index.html")


def test_report_rebuilt_from_a_tree(compared, tmp_path, capsys):
    out, report = compared
    assert main(["report", str(out), "-o", str(tmp_path / "again")]) == 0
    rebuilt = pd.read_csv(tmp_path / "again" / "summary.csv").set_index("policy").sort_index()
    original = pd.read_csv(report.summary_csv).set_index("policy").sort_index()
    pd.testing.assert_frame_equal(rebuilt, original)
    assert "| runs ok / failed | 2 / 0 | 2 / 0 |" in capsys.readouterr().out

    # A run directory without runspec.json (e.g. from `testbed run`) gets its policy from its decision logs.
    plain = tmp_path / "plain"
    shutil.copytree(out / "l4s-coexistence" / ACTING / "default" / "1", plain)
    (plain / "runspec.json").unlink()
    run = load_run(plain)
    assert (run.policy, run.scenario, run.seed, run.state) == (ACTING, "l4s-coexistence", 1, "ok")


def test_report_of_nothing_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r")]) == 2
    assert "no run directories" in capsys.readouterr().err
