"""QoE arithmetic against hand-computed values."""

import math

import numpy as np
import pytest

from agents.protocol.qoe import QOE_LIN_REBUFFER_PENALTY, QoeSummary, qoe_lin, qoe_lin_terms, qoe_log

# A three-chunk session: 750 kbps with a 1 s startup, up to 1200, down to 300 with a 0.5 s stall.
BITRATES_BPS = [750e3, 1200e3, 300e3]
REBUFFER_S = [1.0, 0.0, 0.5]


def test_penalty_constant_is_pensieves():
    assert QOE_LIN_REBUFFER_PENALTY == 4.3


def test_lin_terms_by_hand():
    terms = qoe_lin_terms(BITRATES_BPS, REBUFFER_S, prev_bitrate_bps=750e3)
    np.testing.assert_allclose(terms.bitrate, [0.75, 1.2, 0.3])
    np.testing.assert_allclose(terms.rebuffer_penalty, [4.3, 0.0, 2.15])
    np.testing.assert_allclose(terms.smoothness_penalty, [0.0, 0.45, 0.9])
    np.testing.assert_allclose(terms.total, [-3.55, 0.75, -2.75])
    np.testing.assert_allclose(qoe_lin(BITRATES_BPS, REBUFFER_S, 750e3), [-3.55, 0.75, -2.75])


def test_first_chunk_pays_for_a_switch_from_the_start_quality():
    np.testing.assert_allclose(qoe_lin([1200e3], [0.0], prev_bitrate_bps=300e3), [1.2 - 0.9])
    np.testing.assert_allclose(qoe_lin([1200e3], [0.0]), [1.2])


def test_log_variant_by_hand():
    got = qoe_log(BITRATES_BPS, REBUFFER_S, min_bitrate_bps=300e3, prev_bitrate_bps=750e3)
    u = [math.log(2.5), math.log(4.0), 0.0]
    expected = [u[0] - 2.66, u[1] - (u[1] - u[0]), u[2] - 2.66 * 0.5 - u[1]]
    np.testing.assert_allclose(got, expected)


def test_summary_by_hand():
    s = QoeSummary.from_chunks(BITRATES_BPS, REBUFFER_S, chunk_duration_s=4.0, prev_bitrate_bps=750e3)
    assert s.chunks == 3
    assert s.qoe_lin_mean == pytest.approx((-3.55 + 0.75 - 2.75) / 3)
    assert s.qoe_lin_mean_after_first == pytest.approx((0.75 - 2.75) / 2)
    assert s.avg_bitrate_bps == pytest.approx(750e3)
    assert s.startup_delay_s == pytest.approx(1.0)
    assert s.rebuffer_s == pytest.approx(0.5)
    assert s.rebuffer_count == 1
    assert s.rebuffer_ratio == pytest.approx(0.5 / (12.0 + 0.5))
    assert s.switches == 2


def test_one_chunk_session_has_no_after_first_mean():
    s = QoeSummary.from_chunks([750e3], [0.2], chunk_duration_s=4.0)
    assert math.isnan(s.qoe_lin_mean_after_first)
    assert s.qoe_lin_mean == pytest.approx(0.75 - 4.3 * 0.2)


@pytest.mark.parametrize(
    "bitrates, rebuffers",
    [([750e3, 300e3], [0.0]), ([750e3], [-1.0]), ([0.0], [0.0]), ([], [])],
)
def test_bad_sessions_are_rejected(bitrates, rebuffers):
    with pytest.raises(ValueError):
        qoe_lin(bitrates, rebuffers)


def test_log_rejects_a_floor_above_the_chunks():
    with pytest.raises(ValueError, match="min_bitrate_bps"):
        qoe_log([300e3], [0.0], min_bitrate_bps=750e3)
