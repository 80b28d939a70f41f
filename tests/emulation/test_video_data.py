"""Manifest and trace loaders on good and bad inputs."""

from pathlib import Path

import numpy as np
import pytest

from emulation.video import (
    BandwidthTrace,
    ManifestError,
    TraceError,
    VideoManifest,
    constant_trace,
    default_manifest,
    default_traces,
    load_manifest,
    load_trace,
    load_trace_set,
    synthetic_manifest,
    synthetic_trace,
)


def write_video(directory: Path, levels: int = 3, chunks: int = 4, overrides: dict | None = None) -> Path:
    """video_size_<q> files with chunk j of level q = 1000 * (q + 1) + j bytes, unless overridden."""
    directory.mkdir(parents=True, exist_ok=True)
    for q in range(levels):
        text = (overrides or {}).get(q, "".join(f"{1000 * (q + 1) + j}\n" for j in range(chunks)))
        (directory / f"video_size_{q}").write_text(text)
    return directory


# --- manifests ---------------------------------------------------------------


def test_default_manifest_is_video1():
    m = default_manifest()
    assert m.name == "video1"
    assert m.chunk_bytes.shape == (6, 48)
    np.testing.assert_array_equal(m.bitrates_bps, [300e3, 750e3, 1200e3, 1850e3, 2850e3, 4300e3])
    assert m.chunk_duration_s == 4.0
    assert m.chunk_bytes[0, 0] == 181801  # first line of video_size_0
    assert m.chunk_bytes[0, 47] == 118421  # line 48; line 49 (112270) is not used
    # Sizes track the nominal bitrate x 4 s.
    np.testing.assert_allclose(m.chunk_bytes.mean(axis=1) * 8 / 4.0, m.bitrates_bps, rtol=0.02)


def test_load_manifest_reads_rows_as_levels(tmp_path):
    m = load_manifest(write_video(tmp_path / "v"), bitrates_kbps=(100, 200, 300), chunk_duration_s=2.0, n_chunks=3)
    np.testing.assert_array_equal(m.chunk_bytes, [[1000, 1001, 1002], [2000, 2001, 2002], [3000, 3001, 3002]])
    assert (m.n_levels, m.n_chunks, m.duration_s, m.name) == (3, 3, 6.0, "v")


def test_manifest_arrays_are_read_only(tmp_path):
    m = load_manifest(write_video(tmp_path / "v"), bitrates_kbps=(100, 200, 300), n_chunks=4)
    with pytest.raises(ValueError):
        m.chunk_bytes[0, 0] = 1


def test_future_chunk_bytes_pads_past_the_end(tmp_path):
    m = load_manifest(write_video(tmp_path / "v"), bitrates_kbps=(100, 200, 300), n_chunks=4)
    future = m.future_chunk_bytes(2)
    np.testing.assert_array_equal(future[:2], [[1002, 2002, 3002], [1003, 2003, 3003]])
    assert not future[2:].any()


def test_abr_observation_keeps_last_history_oldest_first(tmp_path):
    m = load_manifest(write_video(tmp_path / "v"), bitrates_kbps=(100, 200, 300), n_chunks=4)
    obs = m.abr_observation(1, 2, 3.5, 0.25, [float(i) for i in range(1, 11)], [1.0, 2.0])
    np.testing.assert_array_equal(obs.throughput_bps, [3, 4, 5, 6, 7, 8, 9, 10])
    np.testing.assert_array_equal(obs.download_time_s, [0, 0, 0, 0, 0, 0, 1, 2])
    assert (obs.chunk_index, obs.chunks_total, obs.last_quality, obs.buffer_s) == (1, 4, 2, 3.5)
    assert obs.to_vector().size == obs.vector_size(3)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({1: "2000\n2001\n2002\n"}, "ragged"),
        ({2: "3000\n3001\nabc\n3003\n"}, r"video_size_2:3: expected one integer"),
        ({0: "1000\n0\n1002\n1003\n"}, r"video_size_0:2: chunk size must be positive"),
        ({1: "2000\n-5\n2002\n2003\n"}, r"video_size_1:2: chunk size must be positive"),
        ({0: "1000\n\n1002\n1003\n"}, r"video_size_0:2"),
        ({2: ""}, r"video_size_2: file is empty"),
    ],
)
def test_bad_manifest_files_name_file_and_line(tmp_path, overrides, match):
    directory = write_video(tmp_path / "v", overrides=overrides)
    with pytest.raises(ManifestError, match=match):
        load_manifest(directory, bitrates_kbps=(100, 200, 300), n_chunks=3)


def test_missing_manifest_dir_and_file(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nowhere")
    directory = write_video(tmp_path / "v", levels=2)
    with pytest.raises(ManifestError, match="video_size_2: chunk size file not found"):
        load_manifest(directory, bitrates_kbps=(100, 200, 300), n_chunks=3)


def test_too_few_chunks_and_unordered_bitrates(tmp_path):
    directory = write_video(tmp_path / "v")
    with pytest.raises(ManifestError, match="4 chunks .* need n_chunks=48"):
        load_manifest(directory, bitrates_kbps=(100, 200, 300))
    with pytest.raises(ManifestError, match="ascending"):
        load_manifest(directory, bitrates_kbps=(100, 300, 200), n_chunks=3)
    with pytest.raises(ManifestError, match="ascending"):
        VideoManifest(np.array([2e6, 1e6]), 4.0, np.ones((2, 3)))


def test_synthetic_manifest_is_seeded_and_ordered():
    a = synthetic_manifest(variability=0.2, seed=5)
    np.testing.assert_array_equal(a.chunk_bytes, synthetic_manifest(variability=0.2, seed=5).chunk_bytes)
    assert not np.array_equal(a.chunk_bytes, synthetic_manifest(variability=0.2, seed=6).chunk_bytes)
    assert np.all(np.diff(a.chunk_bytes, axis=0) > 0)
    nominal = a.bitrates_bps[:, None] * 4.0 / 8
    assert np.all(np.abs(a.chunk_bytes / nominal - 1) <= 0.2 + 1e-6)
    flat = synthetic_manifest(bitrates_kbps=(800,), chunk_duration_s=2.0, n_chunks=3, variability=0.0)
    np.testing.assert_array_equal(flat.chunk_bytes, [[200_000] * 3])
    with pytest.raises(ManifestError, match="variability"):
        synthetic_manifest(variability=1.0)


# --- traces ------------------------------------------------------------------


def test_two_column_trace_with_float_times(tmp_path):
    path = tmp_path / "t"
    path.write_text("0.0 1.5\n0.5\t2\n2.25  0\n3 4.0\n\n")
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.times_s, [0.0, 0.5, 2.25, 3.0])
    np.testing.assert_array_equal(trace.bandwidth_bps, [1.5e6, 2e6, 0.0, 4e6])
    assert trace.name == "t"
    assert trace.duration_s == 3.0


def test_rate_at_steps_forward_and_wraps():
    trace = BandwidthTrace(np.array([0.0, 1.0, 3.0]), np.array([1.0, 2.0, 9.0]))
    assert trace.rate_at(0.5) == 1.0
    assert trace.rate_at(1.0) == 2.0
    assert trace.rate_at(2.99) == 2.0
    assert trace.rate_at(3.5) == 1.0  # period 3 s: the last sample only marks the end
    np.testing.assert_array_equal(trace.rate_at(np.array([0.0, 1.5, 4.5])), [1.0, 2.0, 2.0])
    assert trace.mean_bps == pytest.approx((1.0 * 1 + 2.0 * 2) / 3)


def test_mahimahi_trace_becomes_binned_rates(tmp_path):
    path = tmp_path / "mm.trace"
    path.write_text("0\n10\n20\n20\n150\n200\n")
    trace = load_trace(path)
    np.testing.assert_allclose(trace.times_s, [0.0, 0.1, 0.2])
    # bin [0, 100 ms): 4 packets; bin [100, 200 ms]: 2 packets; each 1500 B over 0.1 s.
    np.testing.assert_allclose(trace.bandwidth_bps[:2], [4 * 12000 / 0.1, 2 * 12000 / 0.1])
    coarse = load_trace(path, mahimahi_bin_s=0.2)
    np.testing.assert_allclose(coarse.bandwidth_bps[0], 6 * 12000 / 0.2)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "file is empty"),
        ("\n\n", "file is empty"),
        ("0 1\n1 2 3\n2 1\n", r"t:2: ragged row"),
        ("0 1\n1 -0.5\n", r"t:2: negative bandwidth"),
        ("0 1\n1 2\n1 3\n", r"t:3: time 1.0 s does not increase"),
        ("0 1\n2 2\n1 3\n", r"t:3: time 1.0 s does not increase"),
        ("0 1\n1 fast\n", r"t:2: expected two numbers"),
        ("0 1\n", "at least 2 lines"),
        ("0 1 2\n1 2 3\n", "expected 't_s Mbps'"),
        ("0\n5\n3\n", r"t:3: timestamp 3 ms goes back"),
        ("0\n1.5\n", r"t:2: expected an integer millisecond timestamp"),
        ("-1\n5\n", r"t:1: negative timestamp"),
        ("0\n0\n", "must end after 0 ms"),
    ],
)
def test_bad_trace_files_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "t"
    path.write_text(text)
    with pytest.raises(TraceError, match=match):
        load_trace(path)


def test_missing_trace_and_set(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        load_trace(tmp_path / "nope")
    with pytest.raises(TraceError, match="not found"):
        load_trace_set(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="no trace files"):
        load_trace_set(tmp_path / "empty")


def test_trace_set_is_sorted_and_limited(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / name).write_text("0 1\n1 1\n")
    (tmp_path / "README.md").write_text("not a trace\n")
    assert [t.name for t in load_trace_set(tmp_path)] == ["a", "b", "c"]
    assert [t.name for t in load_trace_set(tmp_path, limit=2)] == ["a", "b"]
    assert [t.name for t in load_trace_set(tmp_path / "c")] == ["c"]


def test_default_traces_ship_four_fcc_logs():
    traces = default_traces()
    assert len(traces) == 4
    assert all(t.name.startswith("test_fcc_trace_") and t.duration_s > 300 for t in traces)


def test_synthetic_trace_is_seeded_and_bounded():
    a = synthetic_trace(7, duration_s=120, min_mbps=1, max_mbps=3, min_hold_s=2, max_hold_s=5)
    b = synthetic_trace(7, duration_s=120, min_mbps=1, max_mbps=3, min_hold_s=2, max_hold_s=5)
    np.testing.assert_array_equal(a.bandwidth_bps, b.bandwidth_bps)
    assert not np.array_equal(a.bandwidth_bps, synthetic_trace(8, duration_s=120).bandwidth_bps)
    assert a.duration_s == 120
    assert np.all((a.bandwidth_bps >= 1e6) & (a.bandwidth_bps <= 3e6))
    holds = np.diff(a.times_s)
    assert np.all((holds[:-1] >= 2) & (holds[:-1] <= 5)) and holds[-1] <= 5
    with pytest.raises(TraceError, match="min_hold_s"):
        synthetic_trace(0, min_hold_s=3, max_hold_s=2)


def test_constant_trace():
    trace = constant_trace(2.5, duration_s=10)
    assert trace.rate_at(7.3) == 2.5e6
    assert trace.duration_s == 10
    with pytest.raises(TraceError):
        constant_trace(-1.0)
