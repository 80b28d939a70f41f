"""End-to-end runs of real ns-3 simulations through the testbed runner (one
simulation per process), short simulated durations."""

from __future__ import annotations

import pandas as pd
import pytest

from emulation.pcap_ecn import count_ecn
from testbed.runner import run_config
from testbed.scenario import load_scenario


@pytest.fixture(scope="module")
def dualpi2_run(tmp_path_factory):
    config = load_scenario("l4s-coexistence", {"duration_s": 10, "probes.warmup_s": 4})
    result = run_config(config, tmp_path_factory.mktemp("dualpi2"))
    assert result.status == "ok", result.error
    return result


def test_l4s_coexistence_meets_the_l4s_targets(dualpi2_run):
    s = dualpi2_run.summary
    assert s["queues"]["L"]["p99_ms"] < 2.0
    assert 10.0 <= s["queues"]["C"]["mean_ms"] <= 20.0
    assert s["utilisation"] >= 0.90
    assert 0.5 <= s["l_c_ratio"] <= 3.0
    assert s["events"]["l_marks"] > 0


def test_run_directory_holds_the_documented_tables(dualpi2_run):
    run_dir = dualpi2_run.run_dir
    for name in ("config.yaml", "status.json", "summary.json", "queue.parquet", "sojourn.parquet", "flows.parquet"):
        assert (run_dir / name).is_file(), name
    queue = pd.read_parquet(run_dir / "queue.parquet")
    assert {"time_s", "l_len_pkts", "p_prime", "p_cl", "p_c", "departed_bytes", "l_marks"} <= set(queue.columns)
    assert queue["p_prime"].max() > 0
    flows = pd.read_parquet(run_dir / "flows.parquet")
    assert set(flows["flow"]) == {"l4s-1", "l4s-2", "classic-1", "classic-2"}


def test_same_seed_same_tables(dualpi2_run, tmp_path):
    config = load_scenario("l4s-coexistence", {"duration_s": 10, "probes.warmup_s": 4})
    again = run_config(config, tmp_path)
    for table in ("queue.parquet", "flows.parquet", "sojourn.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(dualpi2_run.run_dir / table), pd.read_parquet(again.run_dir / table)
        )


def test_fifo_gives_l4s_no_isolation(dualpi2_run, tmp_path):
    config = load_scenario("classic-fifo", {"duration_s": 10, "probes.warmup_s": 4})
    fifo = run_config(config, tmp_path).summary
    dual = dualpi2_run.summary
    # One shared queue: every packet, L4S included, waits behind the classic backlog.
    assert fifo["queues"]["C"]["p50_ms"] > 20 * dual["queues"]["L"]["p99_ms"]
    assert fifo["queues"]["L"]["count"] == 0
    # No AQM, so no ECN signal: the L4S senders get no marks and see only the classic backlog.
    assert fifo["events"]["l_marks"] == fifo["events"]["c_marks"] == 0
    assert dual["events"]["l_marks"] > 0


def _single_kind_run(tmp_path, kind: str):
    config = load_scenario(
        "l4s-coexistence",
        {"duration_s": 5, "probes.warmup_s": 1, "flows": [{"name": kind, "kind": kind, "count": 2, "rtt_ms": 10}]},
    )
    result = run_config(config, tmp_path)
    assert result.status == "ok", result.error
    return result.summary


def test_classic_only_traffic_makes_no_l_marks(tmp_path):
    s = _single_kind_run(tmp_path, "classic")
    assert s["events"]["l_marks"] == 0
    assert s["queues"]["L"]["count"] == 0
    assert s["events"]["c_drops"] > 0


def test_l4s_only_traffic_makes_no_classic_drops(tmp_path):
    s = _single_kind_run(tmp_path, "l4s")
    assert s["events"]["c_drops"] == 0
    assert s["events"]["l_marks"] > 0
    assert s["queues"]["L"]["p99_ms"] < 2.0


def test_pcap_shows_ect1_on_l4s_flows_and_ce_marks(tmp_path):
    config = load_scenario(
        "l4s-coexistence",
        {"duration_s": 3, "probes.warmup_s": 1, "bottleneck.capture": True,
         "flows": [{"name": "l4s", "kind": "l4s", "rtt_ms": 10}, {"name": "classic", "kind": "classic", "ecn": True, "rtt_ms": 10}]},
    )
    result = run_config(config, tmp_path)
    assert result.status == "ok", result.error
    pcaps = sorted(tmp_path.glob("bottleneck*.pcap"))
    assert pcaps, "capture: true must write a pcap"
    table = count_ecn(pcaps[0])
    data = table[table["dport"] >= 5000]  # sender -> receiver data packets
    l4s = data[data["dport"] == 5000].iloc[0]
    classic = data[data["dport"] == 5001].iloc[0]
    assert l4s["ect1"] + l4s["ce"] > 1000 and l4s["ect0"] == 0
    assert l4s["ce"] > 0, "the L queue marks CE"
    assert classic["ect0"] > 1000 and classic["ect1"] == 0
