"""The chunk-level simulator: hand-worked sessions, the decisions table, and the classic ordering on FCC traces."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from agents.abr import BBA, RateBased, RobustMPC
from agents.protocol.control_points import AbrObservation
from emulation.video import (
    BandwidthTrace,
    TraceError,
    VideoManifest,
    constant_trace,
    default_manifest,
    default_traces,
    load_trace_set,
    synthetic_manifest,
    synthetic_trace,
)
from testbed.chunksim import VIDEO_COLUMNS, evaluate, main, run_session, simulate_session, write_decisions

FLAT_VIDEO = synthetic_manifest(variability=0.0)  # chunk bytes = bitrate x 4 s / 8: 375000 B at level 1


class Fixed:
    """Always the same quality; records what it was shown and told."""

    control = "abr"

    def __init__(self, quality: int) -> None:
        self.name = f"fixed-{quality}"
        self.quality = quality
        self.seen: list[AbrObservation] = []
        self.rewards: list[float] = []

    def reset(self) -> None:
        self.seen, self.rewards = [], []

    def act(self, obs: AbrObservation) -> int:
        self.seen.append(obs)
        return self.quality

    def observe_reward(self, reward: float) -> None:
        self.rewards.append(reward)


# 375000 B at 3 Mbps x 0.95 payload, plus the 80 ms RTT.
DELAY_S = 375000 / (3e6 / 8 * 0.95) + 0.08


def test_constant_link_by_hand():
    video = simulate_session(Fixed(1), constant_trace(3.0, duration_s=1000), FLAT_VIDEO)
    assert list(video.columns) == VIDEO_COLUMNS
    assert len(video) == 48 and (video["quality"] == 1).all()
    first = video.iloc[0]
    assert first["download_s"] == pytest.approx(DELAY_S)
    assert first["first_byte_s"] == pytest.approx(0.08)
    assert first["rebuffer_s"] == pytest.approx(DELAY_S)  # empty buffer: the whole delay stalls
    assert first["buffer_after_s"] == pytest.approx(4.0)
    assert first["qoe_lin"] == pytest.approx(0.75 - 4.3 * DELAY_S)
    assert first["throughput_bps"] == pytest.approx(375000 * 8 / DELAY_S)
    # Each later chunk adds 4 s and drains DELAY_S, no stall, until the 60 s cap.
    assert video["rebuffer_s"].iloc[1:].eq(0).all()
    assert video.iloc[20]["buffer_before_s"] == pytest.approx(4 + 19 * (4 - DELAY_S))
    assert video.iloc[20]["wait_s"] == 0
    # After chunk 20 the buffer reaches 4 + 20 x 2.867 = 61.35 s: wait ceil(1.35 / 0.5) x 0.5 = 1.5 s.
    assert video.iloc[21]["wait_s"] == pytest.approx(1.5)
    assert video.iloc[21]["buffer_before_s"] == pytest.approx(4 + 20 * (4 - DELAY_S) - 1.5)
    assert video.iloc[21]["request_s"] == pytest.approx(21 * DELAY_S + 1.5)
    assert video["buffer_before_s"].max() <= 60.0
    assert video["qoe_lin"].iloc[1:].eq(0.75).all()


def test_starts_at_second_line_and_wraps():
    # Line 0's 100 Mbps is never used; (0,1] runs at 1 Mbps, (1,2] at 2 Mbps, then the trace wraps to (0,1].
    trace = BandwidthTrace(np.array([0.0, 1.0, 2.0]), np.array([100e6, 1e6, 2e6]))
    per_s = {1: 1e6 / 8 * 0.95, 2: 2e6 / 8 * 0.95}
    sizes = [per_s[1] + per_s[2] + 0.5 * per_s[1], 0.5 * per_s[1] + per_s[2] + 0.5 * per_s[1]]
    manifest = VideoManifest(np.array([1e6]), 4.0, np.array([np.rint(sizes)]))
    video = simulate_session(Fixed(0), trace, manifest, start_quality=0)
    np.testing.assert_allclose(video["download_s"], [2.5 + 0.08, 2.0 + 0.08], atol=1e-5)


def test_trace_runs_on_while_the_client_waits():
    # (0,5.5] at 1 Mbps, (5.5,20] at 4 Mbps; 1-s chunks at 1 Mbps; a 4 s buffer cap forces waits.
    trace = BandwidthTrace(np.array([0.0, 5.5, 20.0]), np.array([0.0, 1e6, 4e6]))
    manifest = VideoManifest(np.array([1e6]), 4.0, np.full((1, 3), 1e6 / 8 * 0.95))
    video = simulate_session(Fixed(0), trace, manifest, buffer_cap_s=4.0, start_quality=0)
    # Chunk 1 ends at trace time 2 s with 8 - 1.08 s buffered: wait ceil(2.92 / 0.5) x 0.5 = 3 s, to trace time 5 s,
    # so chunk 2 gets 0.5 s at 1 Mbps (half the chunk) and the other half at 4 Mbps in 0.125 s.
    assert video.iloc[2]["wait_s"] == pytest.approx(3.0)
    np.testing.assert_allclose(video["download_s"], [1.08, 1.08, 0.5 + 0.125 + 0.08])


def test_policy_sees_the_client_observation():
    policy = Fixed(1)
    video = simulate_session(policy, constant_trace(3.0, duration_s=1000), FLAT_VIDEO)
    assert len(policy.seen) == 47  # chunk 0 is fetched at the start quality
    obs = policy.seen[2]  # before chunk 3
    assert obs.chunk_index == 3 and obs.last_quality == 1
    np.testing.assert_allclose(obs.throughput_bps, [0] * 5 + [375000 * 8 / DELAY_S] * 3)
    np.testing.assert_allclose(obs.download_time_s, [0] * 5 + [DELAY_S] * 3)
    assert obs.buffer_s == pytest.approx(video.iloc[3]["buffer_before_s"])
    np.testing.assert_array_equal(obs.future_chunk_bytes[0], FLAT_VIDEO.chunk_bytes[:, 3])
    assert policy.seen[0].rebuffer_s == pytest.approx(DELAY_S)  # the startup stall of chunk 0
    assert not policy.seen[-1].future_chunk_bytes[1:].any()  # chunk 47 is the last
    np.testing.assert_allclose(policy.rewards, video["qoe_lin"])


def test_bad_quality_is_reported():
    with pytest.raises(ValueError, match="policy fixed-9: the decision for chunk 1 returned 9"):
        simulate_session(Fixed(9), constant_trace(3.0), FLAT_VIDEO)


def test_dead_trace_is_rejected():
    with pytest.raises(ValueError, match="no chunk would finish"):
        simulate_session(BBA(), BandwidthTrace(np.array([0.0, 1.0]), np.array([1e6, 0.0])), FLAT_VIDEO)


def test_decisions_table(tmp_path):
    result = run_session(RobustMPC(), constant_trace(3.0, duration_s=1000), FLAT_VIDEO)
    path = write_decisions(result.decisions, tmp_path / "decisions.parquet", "mpc")
    table = pq.read_table(path)
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert json.loads(metadata["obs_fields"]) == AbrObservation.field_names(6)
    assert (metadata["control"], metadata["acting_policy"], metadata["control_point"]) == ("abr", "mpc", "abr-0")
    rows = table.to_pandas()
    assert len(rows) == 48 and rows["step"].tolist() == list(range(48))
    assert rows["done"].tolist() == [False] * 47 + [True]
    # Row k carries the reward of chunk k (the previous action) and chooses chunk k + 1.
    np.testing.assert_allclose(rows["reward"], result.video["qoe_lin"])
    assert [list(a) for a in rows["action"][:47]] == [[float(q)] for q in result.video["quality"][1:]]
    assert len(rows["action"].iloc[-1]) == 1 and np.isnan(rows["action"].iloc[-1][0])
    decoded = AbrObservation.from_vector(rows["obs"].iloc[4])
    assert decoded.chunk_index == 5 and decoded.last_quality == result.video["quality"].iloc[4]
    assert rows["sim_time_s"].iloc[4] == pytest.approx(result.video["request_s"].iloc[5])
    assert json.loads(rows["info"].iloc[0])["chunk"] == 1
    with pytest.raises(ValueError, match="lack columns"):
        write_decisions(pd.DataFrame({"obs": [[1.0]]}), tmp_path / "bad.parquet", "mpc")


def test_evaluate_and_cli(tmp_path, capsys):
    traces = [synthetic_trace(1, duration_s=100), synthetic_trace(2, duration_s=100)]
    table = evaluate({"bba": BBA, "rate": RateBased}, traces, FLAT_VIDEO, out_dir=tmp_path / "e", decisions=True)
    assert len(table) == 4 and set(table["policy"]) == {"bba", "rate"}
    assert table["qoe_lin"].notna().all()
    video = pd.read_parquet(tmp_path / "e" / "rate" / "video.parquet")
    assert len(video) == 96 and set(video["client"]) == {"synthetic-1", "synthetic-2"}
    assert len(pd.read_parquet(tmp_path / "e" / "bba" / "decisions.parquet")) == 96

    assert main(["--policy", "bba,mpc,mpc-published", "--limit", "1", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "mpc" in out and "bba" in out and "mpc-published" in out and "qoe_lin" in out
    assert len(pd.read_parquet(tmp_path / "cli" / "evaluation.parquet")) == 3
    with pytest.raises(SystemExit):
        main(["--policy", "nope"])


def test_classic_ordering_on_validation_sample():
    # valid-fcc when the shared data is present, else the shipped traces (taken from valid-fcc).
    try:
        traces = load_trace_set("valid-fcc")[::3]
    except TraceError:
        traces = default_traces()
    table = evaluate({"bba": BBA, "rate": RateBased, "mpc": RobustMPC}, traces, default_manifest())
    qoe = table.groupby("policy")["qoe_lin"].mean()
    assert qoe["mpc"] > qoe["rate"] > qoe["bba"], qoe.to_dict()
