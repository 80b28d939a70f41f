"""The clairvoyant teacher: its view of the future is the simulator's own link, and it plans on it."""

import numpy as np
import pandas as pd

from agents.abr import ClairvoyantMPC, RobustMPC
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
