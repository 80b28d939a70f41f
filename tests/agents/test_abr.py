"""Classic ABR policies on hand-worked states."""

import itertools

import numpy as np
import pytest

from agents.abr import BBA, AbrPolicy, BolaE, RateBased, RobustMPC
from agents.abr.mpc import all_plans, best_plan_index
from agents.protocol.control_points import ABR_HISTORY, ABR_HORIZON, AbrObservation

BITRATES_BPS = np.array([300e3, 750e3, 1200e3, 1850e3, 2850e3, 4300e3])
CHUNK_S = 4.0


def make_obs(
    buffer_s: float = 10.0,
    throughputs_bps: list[float] | None = None,
    last_quality: int = 1,
    chunk_index: int = 10,
    chunks_total: int = 48,
) -> AbrObservation:
    """An observation over a constant-size video (chunk bytes = nominal bitrate x 4 s)."""
    history = np.zeros(ABR_HISTORY)
    samples = np.asarray(throughputs_bps or [], dtype=np.float64)[-ABR_HISTORY:]
    history[ABR_HISTORY - samples.size :] = samples
    future = np.tile(BITRATES_BPS * CHUNK_S / 8, (ABR_HORIZON, 1))
    future[max(chunks_total - chunk_index, 0) :] = 0.0
    return AbrObservation(
        chunk_index=chunk_index,
        chunks_total=chunks_total,
        last_quality=last_quality,
        buffer_s=buffer_s,
        rebuffer_s=0.0,
        chunk_duration_s=CHUNK_S,
        throughput_bps=history,
        download_time_s=np.where(history > 0, 1.0, 0.0),
        bitrates_bps=BITRATES_BPS.copy(),
        future_chunk_bytes=future,
    )


@pytest.mark.parametrize("policy", [BBA(), RateBased(), RobustMPC(), BolaE()])
def test_policies_meet_the_protocol(policy):
    assert isinstance(policy, AbrPolicy)
    assert policy.control == "abr"
    assert policy.name in {"bba", "rate", "mpc", "bola"}


# BBA: level = floor(5 * (buffer - 5) / 10) between 5 and 15 s.
@pytest.mark.parametrize("buffer_s, quality", [(3.0, 0), (5.0, 0), (10.0, 2), (14.9, 4), (15.0, 5), (20.0, 5)])
def test_bba_by_hand(buffer_s, quality):
    assert BBA().act(make_obs(buffer_s=buffer_s)) == quality


def test_bba_respects_its_parameters():
    assert BBA(reservoir_s=2.0, cushion_s=4.0).act(make_obs(buffer_s=4.0)) == 2  # floor(5 * 2 / 4)


@pytest.mark.parametrize("kwargs", [{"reservoir_s": -1.0}, {"cushion_s": 0.0}])
def test_bba_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BBA(**kwargs)


def test_rate_uses_harmonic_mean_of_last_five():
    # Last five: 1, 2, 2, 4, 4 Mbps -> 5 / (1 + 0.5 + 0.5 + 0.25 + 0.25) = 2.0 Mbps -> 1850 kbps.
    # The older 0.1 Mbps sample must be outside the window (it would drag the estimate to level 0).
    obs = make_obs(throughputs_bps=[0.1e6, 1e6, 2e6, 2e6, 4e6, 4e6])
    assert RateBased().act(obs) == 3
    assert RateBased(window=6).act(obs) == 0


def test_rate_keeps_last_quality_without_history():
    assert RateBased().act(make_obs(throughputs_bps=[], last_quality=4)) == 4


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_rate_rejects_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        RateBased(window=window)


def test_mpc_picks_top_level_on_a_fat_link():
    obs = make_obs(buffer_s=10.0, throughputs_bps=[50e6] * 8, last_quality=0)
    assert RobustMPC().act(obs) == 5


def test_mpc_picks_lowest_level_on_a_thin_link_with_empty_buffer():
    obs = make_obs(buffer_s=0.0, throughputs_bps=[0.4e6] * 8, last_quality=3)
    assert RobustMPC().act(obs) == 0


def test_mpc_discounts_by_the_worst_recent_error():
    mpc = RobustMPC()
    first = mpc.predict_throughput_bps(make_obs(throughputs_bps=[1e6] * 5, chunk_index=5))
    assert first == pytest.approx(1e6)
    # Predicted 1 Mbps, measured 2 Mbps: error 0.5. New harmonic mean of 1,1,1,1,2 Mbps is 5 / 4.5 Mbps.
    obs = make_obs(throughputs_bps=[1e6] * 5 + [2e6], chunk_index=6)
    assert mpc.predict_throughput_bps(obs) == pytest.approx(5 / 4.5 * 1e6 / 1.5)
    mpc.reset()
    assert mpc.predict_throughput_bps(obs) == pytest.approx(5 / 4.5 * 1e6)


def test_mpc_records_one_error_per_chunk():
    # Window 2. Chunk 5 predicts 1 Mbps; chunk 6 measures 2 Mbps (error 0.5) and predicts hm(1, 2) = 4/3 Mbps;
    # chunk 7 measures 2 Mbps (error 1/3). The worst of the last two errors is 0.5 -- unless asking twice
    # about chunk 6 (a shadow query) recorded a second error and pushed 0.5 out of the window.
    mpc = RobustMPC(window=2)
    mpc.predict_throughput_bps(make_obs(throughputs_bps=[1e6] * 5, chunk_index=5))
    chunk6 = make_obs(throughputs_bps=[1e6] * 5 + [2e6], chunk_index=6)
    mpc.predict_throughput_bps(chunk6)
    mpc.predict_throughput_bps(chunk6)
    got = mpc.predict_throughput_bps(make_obs(throughputs_bps=[1e6] * 5 + [2e6, 2e6], chunk_index=7))
    assert got == pytest.approx(2e6 / 1.5)


def test_mpc_plan_scores_match_a_plain_loop():
    rng = np.random.default_rng(3)
    obs = make_obs(buffer_s=6.0, throughputs_bps=[1.5e6] * 8, last_quality=2)
    obs.future_chunk_bytes = obs.future_chunk_bytes * rng.uniform(0.7, 1.3, size=obs.future_chunk_bytes.shape)
    throughput_bps = 1.5e6
    plans, scores = RobustMPC().plan_scores(obs, throughput_bps)
    assert plans.shape == (6**5, 5)
    for row in rng.choice(len(plans), size=40, replace=False):
        buffer_s, rebuffer_s, bitrate, smooth, last = 6.0, 0.0, 0.0, 0.0, 2
        for step, q in enumerate(plans[row]):
            download_s = obs.future_chunk_bytes[step, q] * 8 / throughput_bps
            rebuffer_s += max(download_s - buffer_s, 0.0)
            buffer_s = max(buffer_s - download_s, 0.0) + CHUNK_S
            bitrate += BITRATES_BPS[q] / 1e6
            smooth += abs(BITRATES_BPS[q] - BITRATES_BPS[last]) / 1e6
            last = q
        assert scores[row] == pytest.approx(bitrate - 4.3 * rebuffer_s - smooth)


def test_mpc_horizon_shrinks_at_the_end_of_the_video():
    obs = make_obs(buffer_s=20.0, throughputs_bps=[3e6] * 8, chunk_index=46, chunks_total=48)
    plans, _ = RobustMPC().plan_scores(obs, 3e6)
    assert plans.shape == (36, 2)
    assert 0 <= RobustMPC().act(obs) < 6


def test_mpc_ties_go_to_the_first_plan_whatever_the_rounding():
    # From 0.3 Mbps with one step ahead and no stall risk every quality scores 0.3 Mbps exactly (the bitrate gain
    # is paid back as smoothness), but the float sums differ in the last bit: argmax picked quality 2.
    obs = make_obs(buffer_s=40.0, throughputs_bps=[50e6] * 8, last_quality=0)
    plans, scores = RobustMPC(horizon=1).plan_scores(obs, 50e6)
    assert np.ptp(scores) < 1e-15 and int(np.argmax(scores)) == 2
    assert RobustMPC(horizon=1).act(obs) == 0  # ours: the lowest of the tied plans
    assert best_plan_index(np.array([0.1, 1.0, 1.0 - 1e-15, 0.5])) == 1
    assert best_plan_index(np.array([0.1, 1.0, 1.0 - 1e-15, 0.5]), last=True) == 2  # Pensieve's >=
    assert best_plan_index(np.array([0.1, 1.0 - 1e-6, 1.0])) == 2  # a real difference is no tie


def test_mpc_published_variant_plans_with_the_next_chunks_sizes_and_pensieves_ties():
    rng = np.random.default_rng(7)
    video = rng.uniform(0.5, 1.5, size=(6, 48)) * (BITRATES_BPS * CHUNK_S / 8)[:, None]
    obs = make_obs(buffer_s=8.0, throughputs_bps=[2e6] * 8, chunk_index=10)
    obs.future_chunk_bytes = video[:, 10:15].T.copy()
    ours = RobustMPC(chunk_bytes=video).plan_scores(obs, 2e6)[1]
    np.testing.assert_allclose(ours, RobustMPC().plan_scores(obs, 2e6)[1])  # the table gives the same sizes
    shifted = make_obs(buffer_s=8.0, throughputs_bps=[2e6] * 8, chunk_index=10)
    shifted.future_chunk_bytes = video[:, 11:16].T.copy()
    published = RobustMPC(published=True, chunk_bytes=video).plan_scores(obs, 2e6)[1]
    np.testing.assert_allclose(published, RobustMPC().plan_scores(shifted, 2e6)[1])
    # From the observation alone (over the wire) the variant sees 4 chunks ahead.
    assert RobustMPC(published=True).plan_scores(obs, 2e6)[0].shape == (6**4, 4)
    # Past the video's last chunk it plans with that chunk's sizes, from the table or the observation alone.
    last = make_obs(throughputs_bps=[2e6] * 8, chunk_index=46)
    last.future_chunk_bytes[:2] = video[:, 46:48].T
    for mpc in (RobustMPC(published=True, chunk_bytes=video), RobustMPC(published=True)):
        np.testing.assert_allclose(mpc._plan_sizes(last, 2), video[:, [47, 47]].T)
    tie = make_obs(buffer_s=40.0, throughputs_bps=[50e6] * 8, last_quality=0)
    assert RobustMPC(horizon=1, published=True).act(tie) == 5  # its plan loop's >= gives ties to the last plan


def test_all_plans_are_distinct_and_complete():
    plans = all_plans(6, 5)
    assert plans.shape == (7776, 5)
    assert len({tuple(p) for p in plans}) == 7776
    assert {tuple(p) for p in all_plans(3, 2)} == set(itertools.product(range(3), repeat=2))


@pytest.mark.parametrize("kwargs", [{"horizon": 6}, {"horizon": 0}, {"window": 0}, {"rebuffer_penalty": -1.0}])
def test_mpc_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        RobustMPC(**kwargs)


def steady_bola() -> BolaE:
    bola = BolaE()
    bola.act(make_obs(buffer_s=20.0, throughputs_bps=[100e6] * 8))  # buffer > 4 s / 0.5: leaves startup
    return bola


def test_bola_is_monotone_in_buffer():
    bola = steady_bola()
    qualities = [bola.act(make_obs(buffer_s=b, throughputs_bps=[100e6] * 8, last_quality=0)) for b in range(0, 41)]
    assert np.all(np.diff(qualities) >= 0)
    assert qualities[0] == 0 and qualities[-1] == 5


def test_bola_thresholds_follow_gamma_p_and_target():
    # V = 25 / (ln(4300/300) + 5): level 0 below ~14.3 s, top level from ~21.0 s.
    bola = BolaE()
    assert bola.buffer_quality(BITRATES_BPS, 14.0) == 0
    assert bola.buffer_quality(BITRATES_BPS, 14.6) == 1
    assert bola.buffer_quality(BITRATES_BPS, 20.8) == 4
    assert bola.buffer_quality(BITRATES_BPS, 21.2) == 5


def test_bola_startup_follows_safe_throughput():
    # 2 Mbps x 0.9 = 1.8 Mbps -> 1200 kbps, whatever the buffer says.
    assert BolaE().act(make_obs(buffer_s=3.0, throughputs_bps=[2e6] * 3)) == 2


def test_bola_oscillation_guard_caps_increases_but_never_below_last():
    # Buffer says top; 1.3 Mbps sustains 1200 kbps (level 2): from 750 kbps go to max(2, 1) = 2,
    # from 1850 kbps stay at max(2, 3) = 3.
    assert steady_bola().act(make_obs(buffer_s=30.0, throughputs_bps=[1.3e6] * 3, last_quality=1)) == 2
    assert steady_bola().act(make_obs(buffer_s=30.0, throughputs_bps=[1.3e6] * 3, last_quality=3)) == 3


def test_bola_insufficient_buffer_guard_steps_down():
    # Buffer 22 s says top (no increase from 5); safe bitrate 0.5 x 1 Mbps x 22 / 4 = 2.75 Mbps -> 1850 kbps.
    assert steady_bola().act(make_obs(buffer_s=22.0, throughputs_bps=[1e6] * 3, last_quality=5)) == 3


@pytest.mark.parametrize(
    "kwargs", [{"gamma_p": 0.0}, {"buffer_target_s": -1.0}, {"bandwidth_safety": 1.5}, {"throughput_window": 0}]
)
def test_bola_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BolaE(**kwargs)
