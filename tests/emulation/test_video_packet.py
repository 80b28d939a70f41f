"""Packet-level video over a trace-driven bottleneck: VideoServer, VideoClient and VideoComponent.

Each scenario is one short run (<= 60 s simulated) through ``run_simulation``;
several tests read the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from agents.abr import BBA, RobustMPC
from agents.protocol.control_points import AbrObservation
from agents.registry import make_policy
from emulation.config import BottleneckConfig, SimulationConfig, VideoClientConfig
from emulation.decision_delay import Deferred
from emulation.simulation import run_simulation
from emulation.video import BandwidthTrace, constant_trace, synthetic_manifest
from emulation.video.link import TraceDrivenLink
from emulation.video.session import VIDEO_COLUMNS, VideoComponent, manifest_for_config
from testbed.chunksim import VIDEO_COLUMNS as CHUNKSIM_COLUMNS

CHUNK_S = 4.0
REPO = Path(__file__).resolve().parents[2]


def run(ns, out_dir, trace: BandwidthTrace, clients: list[VideoClientConfig], duration_s: float, **component_kw):
    """One run with the bottleneck following ``trace``; returns (summary, video table, component, totals)."""
    ns.RngSeedManager.ResetNextStreamIndex()
    peak_mbps = float(trace.bandwidth_bps.max()) / 1e6
    config = SimulationConfig(
        name="video-test",
        duration_s=duration_s,
        probes={"warmup_s": 0.0},
        bottleneck=BottleneckConfig(rate_mbps=max(peak_mbps, 1.0)),
        video=clients,
    )
    manifests = {c.name: synthetic_manifest(n_chunks=c.n_chunks, seed=1) for c in clients}
    component_kw.setdefault("policy_factory", lambda name: make_policy("abr", name))
    component = VideoComponent(clients, manifest_for=lambda c: manifests[c.name], **component_kw)
    totals = CppTotals(component)
    summary = run_simulation(config, out_dir, components=[TraceDrivenLink(trace), component, totals])
    return summary, pd.read_parquet(out_dir / "video.parquet"), component, totals.values


class CppTotals:
    """Reads the C++ clients' own totals before the simulator is destroyed."""

    def __init__(self, component: VideoComponent) -> None:
        self.component = component
        self.values: dict[str, dict] = {}

    def attach(self, sim) -> None:
        pass

    def finish(self, sim) -> None:
        for name, client in self.component.clients.items():
            server = self.component.servers[name]
            self.values[name] = {
                "served": server.GetRequestsServed(),
                "sent_bytes": server.GetTotalBytesSent(),
                "startup_s": client.GetStartupDelay().GetSeconds(),
                "rebuffer_s": client.GetRebufferTime().GetSeconds(),
                "rebuffer_count": client.GetRebufferCount(),
                "rx_bytes": list(client.chunkRxBytes),
                "finished": client.IsFinished(),
            }


# --- constant 3 Mbps, RobustMPC ---------------------------------------------------------


@pytest.fixture(scope="module")
def mpc_run(ns, tmp_path_factory):
    client = VideoClientConfig(name="mpc", n_chunks=14)
    return run(
        ns,
        tmp_path_factory.mktemp("mpc"),
        constant_trace(3.0, 60.0),
        [client],
        60.0,
        decide={"mpc": RobustMPC().act},
    )


def test_mpc_settles_on_the_highest_bitrate_below_the_link_rate(mpc_run):
    summary, video, component, _ = mpc_run
    bitrates = synthetic_manifest(seed=1).bitrates_bps
    # 2850 kbps: 4300 cannot fit in 3 Mbps. The goodput (~2.75 Mbps after headers and one idle
    # RTT per chunk) is a little below 2850 kbps; MPC covers the gap from the buffer it built.
    sustainable = int(np.flatnonzero(bitrates < 3e6)[-1])
    quality = video["quality"].to_numpy()
    # Ramp-up from the start quality, then the top sustainable level until the horizon shrinks
    # at the end of the video (with 2 chunks left MPC may spend the buffer on a higher level).
    assert (np.diff(quality[:-2]) >= 0).all()
    assert (quality[-6:-2] == sustainable).all()
    assert (video["rebuffer_s"].to_numpy()[1:] == 0).all()
    assert summary["video"]["mpc"]["chunks_played"] == 14
    assert summary["video"]["mpc"]["rebuffer_count"] == 0


def test_chunk_timestamps_are_ordered_and_throughput_is_below_the_link(mpc_run):
    _, video, _, _ = mpc_run
    assert (video["request_s"] < video["first_byte_s"]).all()
    assert (video["first_byte_s"] < video["last_byte_s"]).all()
    assert (video["request_s"].to_numpy()[1:] >= video["last_byte_s"].to_numpy()[:-1]).all()
    np.testing.assert_allclose(video["download_s"], video["last_byte_s"] - video["request_s"])
    # First byte one RTT (80 ms) after the request; payload below the 3 Mbps line rate.
    assert video["first_byte_s"].sub(video["request_s"]).between(0.08, 0.1).all()
    assert video["throughput_bps"].max() < 3e6


def test_video_table_has_the_documented_columns_and_qoe(mpc_run):
    _, video, _, _ = mpc_run
    assert list(video.columns) == VIDEO_COLUMNS == CHUNKSIM_COLUMNS
    mbps = video["bitrate_bps"].to_numpy() / 1e6
    smooth = np.abs(np.diff(mbps, prepend=mbps[0]))
    np.testing.assert_allclose(video["qoe_lin"], mbps - 4.3 * video["rebuffer_s"] - smooth)
    assert video["qoe_smoothness_penalty"].iloc[0] == 0


def test_summary_reports_qoe_with_and_without_the_first_chunk(mpc_run):
    summary, video, _, totals = mpc_run
    s = summary["video"]["mpc"]
    assert s["qoe_lin_mean"] == pytest.approx(video["qoe_lin"].mean())
    assert s["qoe_lin_mean_after_first"] == pytest.approx(video["qoe_lin"].iloc[1:].mean())
    assert s["startup_delay_s"] == pytest.approx(totals["mpc"]["startup_s"])
    assert s["switches"] == int((np.diff(video["quality"]) != 0).sum())


def test_last_observation_describes_the_last_decision(mpc_run):
    _, video, component, _ = mpc_run
    obs = component.last_observation["mpc"]
    assert isinstance(obs, AbrObservation)
    assert obs.chunk_index == 13 and obs.chunks_total == 14
    assert obs.last_quality == video["quality"].iloc[12]
    assert obs.buffer_s == pytest.approx(video["buffer_before_s"].iloc[13])
    # Histories oldest first, the most recent chunk last.
    np.testing.assert_allclose(obs.throughput_bps, video["throughput_bps"].iloc[5:13])
    np.testing.assert_allclose(obs.download_time_s, video["download_s"].iloc[5:13])
    # Sizes of the chunks left, zero past the end.
    manifest = synthetic_manifest(seed=1, n_chunks=14)
    np.testing.assert_array_equal(obs.future_chunk_bytes[0], manifest.chunk_bytes[:, 13])
    assert not obs.future_chunk_bytes[1:].any()


# --- collapse to 0.2 Mbps with a small buffer cap ---------------------------------------

COLLAPSE_AT_S = 20.0
CAP_S = 8.0


@pytest.fixture(scope="module")
def collapse_run(ns, tmp_path_factory):
    trace = BandwidthTrace(np.array([0.0, COLLAPSE_AT_S, 60.0]), np.array([4e6, 0.2e6, 0.2e6]), "collapse")
    client = VideoClientConfig(name="collapse", n_chunks=30, buffer_cap_s=CAP_S)
    return run(ns, tmp_path_factory.mktemp("collapse"), trace, [client], 60.0, decide={"collapse": lambda obs: 0})


def test_collapse_stalls_for_exactly_the_missing_buffer(collapse_run):
    summary, video, _, totals = collapse_run
    later = video.iloc[1:]
    expected = np.maximum(later["last_byte_s"] - later["request_s"] - later["buffer_before_s"], 0.0)
    stalled = later["rebuffer_s"] > 0
    assert stalled.sum() >= 3
    assert (later.loc[stalled, "request_s"] > COLLAPSE_AT_S).all()
    np.testing.assert_allclose(later["rebuffer_s"], expected, atol=0.003)
    s = summary["video"]["collapse"]
    assert s["rebuffer_count"] == stalled.sum()
    assert s["rebuffer_s"] == pytest.approx(later["rebuffer_s"].sum())
    # The C++ totals also count a stall still going on when the run stops.
    assert totals["collapse"]["rebuffer_s"] >= s["rebuffer_s"] - 1e-9
    assert totals["collapse"]["rebuffer_count"] in (s["rebuffer_count"], s["rebuffer_count"] + 1)
    assert s["rebuffer_ratio"] > 0 and s["qoe_lin_mean_after_first"] < 0


def test_first_chunk_rebuffer_is_the_startup_delay(collapse_run):
    _, video, _, totals = collapse_run
    first = video.iloc[0]
    assert first["rebuffer_s"] == pytest.approx(totals["collapse"]["startup_s"])
    # Startup includes the TCP handshake before the first request.
    assert first["rebuffer_s"] == pytest.approx(first["last_byte_s"], abs=1e-9)
    assert first["request_s"] > 0


def test_buffer_drains_continuously_between_chunks(collapse_run):
    _, video, _, _ = collapse_run
    after = video["buffer_after_s"].to_numpy()[:-1]
    idle = video["request_s"].to_numpy()[1:] - video["last_byte_s"].to_numpy()[:-1]
    np.testing.assert_allclose(video["buffer_before_s"].to_numpy()[1:], after - idle, atol=1e-6)
    np.testing.assert_allclose(idle, video["wait_s"].to_numpy()[1:], atol=1e-6)
    # A chunk adds its duration to what was left when it arrived.
    left = np.maximum(video["buffer_before_s"] - video["download_s"], 0.0)
    np.testing.assert_allclose(video["buffer_after_s"].iloc[1:], (left + CHUNK_S).iloc[1:], atol=1e-6)


def test_buffer_never_exceeds_its_cap_plus_one_chunk(collapse_run):
    _, video, _, _ = collapse_run
    assert video["buffer_before_s"].max() <= CAP_S + 1e-9
    assert video["buffer_after_s"].max() <= CAP_S + CHUNK_S + 1e-9
    waited = video["wait_s"] > 0
    assert waited.sum() >= 3
    steps = video.loc[waited, "wait_s"] / 0.5
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)


def test_every_chunk_delivers_exactly_its_manifest_bytes(collapse_run):
    _, video, _, totals = collapse_run
    manifest = synthetic_manifest(seed=1, n_chunks=30)
    expected = manifest.chunk_bytes[video["quality"], video["chunk"]]
    np.testing.assert_array_equal(video["chunk_bytes"], expected)
    np.testing.assert_array_equal(totals["collapse"]["rx_bytes"], expected)
    # The server answered each request with exactly its bytes (one more may be in flight at the end).
    served = totals["collapse"]["served"]
    assert served in (len(video), len(video) + 1)
    assert totals["collapse"]["sent_bytes"] >= expected.sum()


# --- transports and errors ---------------------------------------------------------------


@pytest.mark.parametrize("transport", ["classic", "l4s"])
def test_transport_selects_the_dualpi2_queue(ns, tmp_path, transport):
    # No decide function: the client runs the ABR its config names.
    client = VideoClientConfig(name=transport, n_chunks=3, transport=transport, abr="bba")
    summary, video, _, _ = run(ns, tmp_path, constant_trace(10.0, 20.0), [client], 8.0)
    bitrates = synthetic_manifest(seed=1).bitrates_bps
    bba = [
        BBA().act(AbrObservation(chunk, 3, 0, buffer_s, 0.0, CHUNK_S, bitrates_bps=bitrates))
        for chunk, buffer_s in zip(video["chunk"][1:], video["buffer_before_s"][1:], strict=True)
    ]
    assert video["quality"].tolist() == [1, *bba]
    assert summary["video"][transport]["chunks_played"] == 3
    counts = pd.read_parquet(tmp_path / "sojourn.parquet")["queue"].value_counts()
    if transport == "l4s":
        assert counts["L"] > 0.9 * counts.sum()  # data in ECT(1); only the server's pure ACKs are Not-ECT
    else:
        assert counts["L"] == 0 and counts["C"] > 0


def test_invalid_quality_names_the_client_and_keeps_the_chunks_before(ns, tmp_path):
    client = VideoClientConfig(name="bad-abr", n_chunks=3)
    with pytest.raises(ValueError) as err:
        run(ns, tmp_path, constant_trace(5.0, 20.0), [client], 8.0, decide={"bad-abr": lambda obs: 7})
    # The decision hook's error stops the run at the C++ boundary: its own message, not one wrapped by cppyy.
    assert str(err.value).startswith("video client 'bad-abr': the decision for chunk 1 returned 7")
    assert pd.read_parquet(tmp_path / "video.parquet")["chunk"].tolist() == [0]


def test_deferred_decision_holds_the_request_until_it_takes_effect(ns, tmp_path):
    client = VideoClientConfig(name="late", n_chunks=4)
    answers = iter([Deferred(0.4, lambda: 2), 1, Deferred(0.1, lambda: 9)])
    with pytest.raises(ValueError) as err:
        run(ns, tmp_path, constant_trace(5.0, 20.0), [client], 12.0, decide={"late": lambda obs: next(answers)})
    # A deferred quality is checked when it takes effect, and fails the run there like any other.
    assert str(err.value).startswith("video client 'late': the decision for chunk 3 returned 9")
    video = pd.read_parquet(tmp_path / "video.parquet")
    assert video["quality"].tolist() == [1, 2, 1]
    idle_s = video["request_s"].to_numpy()[1:] - video["last_byte_s"].to_numpy()[:-1]
    np.testing.assert_allclose(idle_s, [0.4, 0.0], atol=1e-9)


def test_a_decision_without_a_waiting_request_is_refused(fresh_sim):
    client = fresh_sim.CreateObject[fresh_sim.VideoClient]()
    assert not client.IsDecisionPending()
    assert not client.SubmitDecision(0)


def test_config_manifest_is_video1_cut_to_n_chunks():
    manifest = manifest_for_config(VideoClientConfig(name="a", n_chunks=5))
    assert manifest.chunk_bytes.shape == (6, 5)
    with pytest.raises(ValueError, match="video client 'b': n_chunks 60"):
        manifest_for_config(VideoClientConfig(name="b", n_chunks=60))


def test_decide_for_an_unknown_client_is_rejected():
    with pytest.raises(ValueError, match="unknown video clients"):
        VideoComponent([VideoClientConfig(name="a")], decide={"b": lambda obs: 0})


def test_a_video_run_does_not_depend_on_the_heaps_contents(tmp_path):
    """Two video clients through DualPI2, run twice with malloc filling fresh memory differently: the same
    chunk timings. (ns-3's forked TcpCubic carried uninitialised state into the server's sender, so a run's
    dynamics followed whatever the process had allocated before, e.g. a served run vs a separate-agent run.)"""
    config = SimulationConfig(
        name="heap", duration_s=6.0, probes={"warmup_s": 0.0},
        bottleneck=BottleneckConfig(rate_mbps=10, delay_ms=1),
        video=[VideoClientConfig(name="v", count=2, rtt_ms=20, n_chunks=4, abr="mpc")],
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    tables = []
    for fill in ("255", "85"):  # glibc fills each allocation with the complement: 0x00, then 0xaa
        out = tmp_path / f"fill-{fill}"
        env = {**os.environ, "MALLOC_PERTURB_": fill, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "testbed.simproc", "--config", str(path), "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        tables.append(pd.read_parquet(out / "video.parquet"))
    assert len(tables[0]) >= 4 and (tables[0]["rebuffer_s"] >= 0).all()
    pd.testing.assert_frame_equal(tables[0], tables[1])
