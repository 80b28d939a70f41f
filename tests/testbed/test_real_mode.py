"""Real mode with real parts: network namespaces, TAPs, kernel TCP (cubic, bbr,
reno), a UDP socket marking ECT(1), a real HTTP server and player steered by
an ABR agent over the wire, all through the real-time simulator's DualPI2.

These tests need root (namespaces, TAPs) and /dev/net/tun, which CI has; the
privilege test drops the capabilities itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from emulation.real.hosts import HOSTS_FILE
from emulation.real.preflight import missing_for_real_mode
from emulation.video.session import VIDEO_COLUMNS
from testbed.report import build_report
from testbed.runner import run_config, with_agents
from testbed.scenario import load_scenario

HERE = Path(__file__).resolve().parent

#: One run carrying every kind of real endpoint, plus a simulated L4S flow in the same DualPI2.
KINDS = {
    "name": "real-kinds",
    "duration_s": 8,
    "bottleneck": {"rate_mbps": 30, "delay_ms": 1, "queue": {"type": "dualpi2"}},
    # What is checked here is the hosts' behaviour, not real-time health: a loaded CI machine may lag.
    "emulation": {"mode": "real", "hard_limit_ms": 2000},
    "flows": [
        {"name": "cubic-ecn", "kind": "classic", "cc": "cubic", "ecn": True, "rtt_ms": 20, "real": True},
        {"name": "bbr", "kind": "classic", "cc": "bbr", "rtt_ms": 20, "real": True, "start_s": 0.5, "stop_s": 4},
        {"name": "reno", "kind": "classic", "cc": "reno", "rtt_ms": 20, "real": True, "max_bytes": 300_000},
        {"name": "udp-ect1", "kind": "udp", "rate_mbps": 2, "ecn": True, "rtt_ms": 20, "real": True,
         "start_s": 1, "stop_s": 5},
        {"name": "sim-l4s", "kind": "l4s", "rtt_ms": 20},
    ],
    "video": [{"name": "video", "rtt_ms": 20, "real": True, "n_chunks": 3}],
    "probes": {"interval_ms": 10, "warmup_s": 1},
}


def _scenario(tmp_path: Path, data: dict, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie has released its namespaces and counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def _namespace_holders(inodes: set[int]) -> list[str]:
    """Processes whose network namespace, or one of whose descriptors, is one of ``inodes``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                found.append(f"{pid} lives in it")
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("net:[") and int(link[5:-1]) in inodes:
                    found.append(f"{pid} holds fd {fd}")
        except OSError:
            continue
    return found


def _assert_nothing_left(record: dict, timeout_s: float = 10.0) -> None:
    pids = [record["sim_pid"], *(h["pid"] for h in record["hosts"].values())]
    inodes = {h["netns_inode"] for h in record["hosts"].values()}
    deadline = time.time() + timeout_s
    while time.time() < deadline and (any(map(_alive, pids)) or _namespace_holders(inodes)):
        time.sleep(0.2)
    assert [p for p in pids if _alive(p)] == []
    assert _namespace_holders(inodes) == []


@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory):
    """The run with every endpoint kind, the video client's ABR (MPC) served by an agent process."""
    tmp = tmp_path_factory.mktemp("real-kinds")
    config = load_scenario(_scenario(tmp, KINDS))
    wired, agents = with_agents(config, None, "mpc")
    result = run_config(wired, tmp / "run", agents=agents)
    assert result.status == "ok", result.error
    return result


def test_real_flows_have_goodput_rows_beside_simulated_ones(kinds_run):
    flows = pd.read_parquet(kinds_run.run_dir / "flows.parquet")
    assert list(flows.columns) == ["time_s", "flow", "rx_bytes", "goodput_bps"]
    assert set(flows["flow"]) == {"cubic-ecn", "bbr", "reno", "udp-ect1", "sim-l4s"}
    per_flow = flows.groupby("flow")["rx_bytes"].sum()
    assert all(per_flow > 100_000), per_flow
    summary = kinds_run.summary
    assert {n for n, f in summary["flows"].items() if f["real"]} == {"cubic-ecn", "bbr", "reno", "udp-ect1"}
    assert not summary["flows"]["sim-l4s"]["real"]
    real = summary["real"]["flows"]
    # Bounded in bytes: the reno sender stops at max_bytes and its receiver got every byte.
    assert real["reno"]["sender_report"]["tx_bytes"] == real["reno"]["receiver_report"]["rx_bytes"] == 300_000
    assert per_flow["reno"] == 300_000
    # Bounded in time: 2 Mbit/s from 1 s to 5 s.
    assert real["udp-ect1"]["sender_report"]["tx_bytes"] == pytest.approx(2e6 * 4 / 8, rel=0.02)
    assert real["cubic-ecn"]["sender_report"]["ecn_negotiated"] is True
    assert real["bbr"]["sender_report"]["ecn_negotiated"] is False


def test_pcaps_show_the_configured_codepoints_and_ce_on_real_l_queue_packets(kinds_run):
    real = kinds_run.summary["real"]
    entries = {**real["flows"], **real["video"]}
    for name, entry in entries.items():
        sent = entry["pcap"]["sender_tap"]
        assert (kinds_run.run_dir / sent["file"]).exists()
        expected = entry["expected_ecn"]
        # New data carries the configured codepoint; TCP retransmissions go out Not-ECT (RFC 3168 6.1.5).
        assert sent[expected] >= sent["data_packets"] - sent["retransmissions"] > 0, (name, sent)
        assert sent["ce"] == 0
    assert {e["expected_ecn"] for e in entries.values()} == {"ect0", "not_ect", "ect1"}
    udp = real["flows"]["udp-ect1"]
    received = udp["pcap"]["receiver_tap"]
    assert received["ce"] > 0  # DualPI2 marked real ECT(1) packets in its L queue
    assert received["ce"] == udp["receiver_report"]["ce"]  # the receiver's IP_RECVTOS agrees with the capture
    for name in ("cubic-ecn", "bbr", "reno"):
        flow = real["flows"][name]
        assert flow["pcap"]["sender_tap"]["retransmissions"] == flow["sender_report"]["total_retrans"], name


def test_real_video_client_is_driven_by_the_abr_agent(kinds_run):
    video = pd.read_parquet(kinds_run.run_dir / "video.parquet")
    assert list(video.columns) == VIDEO_COLUMNS
    assert video["chunk"].tolist() == [0, 1, 2]
    assert (video["request_s"] < video["first_byte_s"]).all() and (video["first_byte_s"] <= video["last_byte_s"]).all()
    assert 0 < video["request_s"].iloc[0] < 0.5  # simulated time: the player starts at its start_s
    decisions = pd.read_parquet(kinds_run.run_dir / "agents" / "abr-video" / "decisions.parquet")
    acting = decisions[(decisions["role"] == "acting") & ~decisions["done"]]
    assert acting["policy"].unique().tolist() == ["mpc"]
    assert [int(a[0]) for a in acting["action"]] == video["quality"].iloc[1:].tolist()
    assert kinds_run.summary["video"]["video"]["chunks_played"] == 3


def test_real_time_health_is_in_the_summary_and_the_report(kinds_run, tmp_path):
    health = kinds_run.summary["realtime"]
    assert health["samples"] == pytest.approx(KINDS["duration_s"] * 1000, abs=5)
    assert health["lateness_max_ms"] >= health["lateness_p99_ms"] >= 0
    assert health["limit_exceeded_at_s"] is None
    assert len(pd.read_parquet(kinds_run.run_dir / "realtime.parquet")) == health["samples"]
    report = build_report([kinds_run.run_dir], tmp_path / "report")
    assert "classic flow throughput, real hosts (Mbps)" in report.markdown
    assert "l4s flow throughput (Mbps)" in report.markdown
    assert "real-time lateness p99 (ms)" in report.markdown


def test_the_run_leaves_no_process_or_namespace(kinds_run):
    _assert_nothing_left(json.loads((kinds_run.run_dir / HOSTS_FILE).read_text()))


def test_sigkill_of_the_cli_leaves_no_host_behind(tmp_path):
    data = {**KINDS, "duration_s": 120, "flows": KINDS["flows"][:1] + KINDS["flows"][3:4], "video": KINDS["video"]}
    run_dir = tmp_path / "run"
    cli = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", str(_scenario(tmp_path, data)),
                            "--out", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hosts_file = run_dir / HOSTS_FILE
    deadline = time.time() + 90
    while not hosts_file.exists() and time.time() < deadline and cli.poll() is None:
        time.sleep(0.2)
    assert hosts_file.exists(), (run_dir / "sim.log").read_text() if (run_dir / "sim.log").exists() else "no log"
    record = json.loads(hosts_file.read_text())
    assert all(_alive(h["pid"]) for h in record["hosts"].values())
    assert _namespace_holders({h["netns_inode"] for h in record["hosts"].values()})
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    _assert_nothing_left(record)


def test_losing_real_time_stops_the_run_with_its_results(tmp_path):
    """A stall of the event loop (a stand-in for an overloaded machine) past the hard limit."""
    proc = subprocess.run([sys.executable, str(HERE / "real_stall.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.splitlines()[-1])
    assert outcome["error"].startswith("RealTimeLost: real time lost at 1.0")
    assert "hard_limit_ms 50" in outcome["error"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["realtime"]["limit_exceeded_at_s"] == pytest.approx(1.0, abs=0.01)
    assert summary["sim_end_s"] < 1.5  # stopped at once, not at the end of its 10 s
    assert (tmp_path / "flows.parquet").exists() and (tmp_path / "queue.parquet").exists()


def _unprivileged(*args: str, drop: str = "all") -> subprocess.CompletedProcess:
    """Run as root with capabilities dropped from every set (as an unprivileged user would lack them)."""
    return subprocess.run(["setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set=-{drop}",
                           sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_a_run_without_privileges_fails_at_once_naming_what_is_missing(tmp_path):
    scenario = _scenario(tmp_path, KINDS)
    started = time.time()
    proc = _unprivileged("-m", "testbed.cli", "run", str(scenario), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "CAP_NET_ADMIN and CAP_SYS_ADMIN" in proc.stderr and "run as root" in proc.stderr
    assert time.time() - started < 30
    assert not (tmp_path / "run").exists()  # nothing was started
    proc = _unprivileged("-m", "testbed.cli", "run", str(scenario), "--out", str(tmp_path / "run"), drop="net_admin")
    assert "needs the capabilities CAP_NET_ADMIN (" in proc.stderr
    # The simulation process checks too (compare and sweep start it without the CLI's check).
    out = tmp_path / "sim"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(load_scenario(scenario).model_dump(mode="json")))
    proc = _unprivileged("-m", "testbed.simproc", "--config", str(out / "config.yaml"), "--out", str(out))
    assert proc.returncode == 1
    assert "RealModeUnavailable" in json.loads((out / "sim-error.json").read_text())["error"]
    assert not (out / HOSTS_FILE).exists()


def test_a_missing_tun_device_is_named(tmp_path):
    missing = missing_for_real_mode(tun_path=str(tmp_path / "tun"))
    assert any(str(tmp_path / "tun") in m and "tun' kernel module" in m for m in missing)
    assert missing_for_real_mode() == []  # this machine (CI: root with /dev/net/tun) has everything


def test_in_sim_mode_real_endpoints_are_simulated(tmp_path):
    data = {**KINDS, "emulation": {"mode": "sim"}, "duration_s": 3,
            "flows": [f for f in KINDS["flows"] if f["kind"] != "udp"]}
    config = load_scenario(_scenario(tmp_path, data))
    assert not any(config.is_real(f) for f in config.all_flows())
    result = run_config(config, tmp_path / "run")
    assert result.status == "ok", result.error
    assert "real" not in result.summary and "realtime" not in result.summary
    received = pd.read_parquet(result.run_dir / "flows.parquet").groupby("flow")["rx_bytes"].sum()
    assert received["reno"] == 300_000 and received["bbr"] > 0 and received["cubic-ecn"] > 0  # ns-3's models
    assert result.summary["video"]["video"]["chunks_played"] >= 1
    assert result.run_dir.name == "run" and not (result.run_dir / HOSTS_FILE).exists()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"flows": [{"name": "x", "kind": "l4s", "real": True}]}, "kernel has no DCTCP or Prague"),
        ({"flows": [{"name": "x", "kind": "classic", "cc": "newreno", "real": True}]}, "kernel's cubic, bbr, reno"),
        ({"flows": [{"name": "x", "kind": "udp", "rate_mbps": 1, "ecn": True}]}, "exists only on real hosts"),
        ({"emulation": {"mode": "sim"}, "flows": [{"name": "x", "kind": "udp", "rate_mbps": 1, "ecn": True,
                                                   "real": True}]}, "emulation.mode: real"),
        ({"video": [{"name": "v", "transport": "l4s", "real": True}]}, "kernel TCP (transport classic)"),
        ({"emulation": {"mode": "real", "hard_limit_ms": 0}}, "emulation.hard_limit_ms"),
    ],
)
def test_real_endpoint_rules_are_checked_with_the_scenario(tmp_path, change, needle):
    from testbed.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="(?s)" + needle.replace("(", r"\(").replace(")", r"\)")):
        load_scenario(_scenario(tmp_path, {"name": "x", "emulation": {"mode": "real"}, **change}))
