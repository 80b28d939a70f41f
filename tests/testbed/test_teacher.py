"""The clairvoyant teacher: its view of the future is the simulator's own link, and it plans on it."""

import numpy as np
import pandas as pd

from agents.abr import ClairvoyantMPC, RobustMPC
from agents.abr.oracle import LinkFuture
from emulation.video import BandwidthTrace, default_manifest, default_traces, synthetic_trace
from testbed.chunksim import BUFFER_CAP_S, RTT_S, _TraceCursor, evaluate, run_session


def test_link_future_predicts_the_cursor_exactly():
    base = synthetic_trace(3, duration_s=40, min_mbps=0.2, max_mbps=3.0, min_hold_s=0.5, max_hold_s=4)
    rates = base.bandwidth_bps.copy()
    rates[2::4] = 0.0  # outages: the byte count stands still there
    trace = BandwidthTrace(base.times_s, rates, "outages")
    cursor = _TraceCursor(trace)
    rng = np.random.default_rng(0)
    for _ in range(60):  # long enough to wrap the 40 s trace several times
        future = cursor.future(RTT_S, BUFFER_CAP_S)
        size = float(rng.uniform(1e4, 2e6))
        wait = float(rng.choice([0.0, 0.5, 3.0]))
        predicted = future.finish_s(np.array([0.0]), np.array([size]))[0]
        assert np.isclose(cursor.download(size), predicted, rtol=1e-9, atol=1e-9)
        # a transfer that starts after an idle wait is predicted from the shifted start too
        later = cursor.future(RTT_S, BUFFER_CAP_S)
        expected_after_wait = later.finish_s(np.array([wait]), np.array([size]))[0] - wait
        cursor.idle(wait)
        assert np.isclose(cursor.download(size), expected_after_wait, rtol=1e-9, atol=1e-9)


def test_oracle_plans_on_the_true_link_and_beats_robust_mpc():
    traces = default_traces()
    table = evaluate({"mpc": RobustMPC, "oracle": ClairvoyantMPC}, traces, default_manifest())
    qoe = table.pivot(index="trace", columns="policy", values="qoe_lin")
    assert qoe["oracle"].mean() > qoe["mpc"].mean() * 1.03, qoe


def test_oracle_needs_a_future():
    manifest = default_manifest()
    obs = manifest.abr_observation(1, 1, 4.0, 0.0, [1e6], [1.0])
    oracle = ClairvoyantMPC()
    try:
        oracle.act(obs)
    except RuntimeError as exc:
        assert "see_future" in str(exc)
    else:
        raise AssertionError("the oracle acted without seeing the future")


def test_shadow_teacher_relabels_the_acting_policy_states():
    trace = default_traces()[1]
    result = run_session(RobustMPC(), trace, default_manifest(), shadows=[ClairvoyantMPC()])
    rows = result.decisions[~result.decisions["done"]]
    acting = rows[rows["role"] == "acting"].set_index("step")
    shadow = rows[rows["role"] == "shadow"].set_index("step")
    assert list(shadow["policy"].unique()) == ["oracle"] and len(shadow) == len(acting) == 47
    # the teacher saw exactly the acting policy's states ...
    pd.testing.assert_series_equal(shadow["obs"].map(tuple), acting["obs"].map(tuple), check_names=False)
    # ... and the session followed the acting policy: the same video as MPC alone
    alone = run_session(RobustMPC(), trace, default_manifest()).video
    pd.testing.assert_frame_equal(alone, result.video)
    # the teacher disagrees somewhere (otherwise relabelling would teach nothing)
    assert (shadow["action"].map(lambda a: a[0]) != acting["action"].map(lambda a: a[0])).any()


def _link(times_s: list[float], mbps: list[float]) -> LinkFuture:
    return LinkFuture(np.array(times_s), np.array(mbps) * 1e6 / 8, 0.0, RTT_S, BUFFER_CAP_S, 0.5)


def test_a_teacher_with_one_chunk_of_foresight_sees_the_next_download_and_nothing_after():
    manifest = default_manifest()
    obs = manifest.abr_observation(5, 2, 12.0, 0.0, [2e6] * 5, [2.0] * 5)
    steady = _link([0.0, 600.0], [0.0, 3.0])
    collapse = _link([0.0, 8.0, 600.0], [0.0, 3.0, 0.2])  # the same first 8 s: every first chunk is in by then
    slow_start = _link([0.0, 8.0, 600.0], [0.0, 0.5, 3.0])

    def scores(teacher: ClairvoyantMPC, future) -> np.ndarray:
        teacher.reset()
        teacher.see_future(future)
        return teacher.action_scores(obs)

    glimpse, oracle = ClairvoyantMPC(foresight=1), ClairvoyantMPC()
    assert glimpse.name == "oracle-f1" and oracle.name == "oracle"
    # beyond its one chunk it plans at RobustMPC's estimate, blind to the collapse the oracle prices
    np.testing.assert_allclose(scores(glimpse, steady), scores(glimpse, collapse))
    assert (scores(oracle, collapse) < scores(oracle, steady) - 0.5).any()
    # ... but the next chunk's own download is the true one
    assert (scores(glimpse, slow_start) < scores(glimpse, steady) - 0.5).any()
    # full foresight is the oracle itself
    np.testing.assert_allclose(scores(ClairvoyantMPC(foresight=5), collapse), scores(oracle, collapse))
