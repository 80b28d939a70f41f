"""Feature specs read observations by field name, scale them, and map AQM actions onto the p' grid."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from agents.protocol.control_points import AbrObservation, AqmObservation, aqm_action_grid
from llm.features import (
    FEATURE_CLIP,
    FeatureSpec,
    RewardScale,
    feature_spec,
    p_prime_grid,
    p_prime_to_index,
    p_prime_two_hot,
)
from tests.llm.synthetic import BITRATES_BPS, N_LEVELS, abr_fields, aqm_fields


def test_p_prime_grid_matches_the_testbed_action_grid():
    for n in (2, 5, 17, 33):
        np.testing.assert_allclose(p_prime_grid(n), aqm_action_grid(n))
    grid = p_prime_grid()
    assert grid[0] == 0.0 and grid[1] == pytest.approx(1e-4) and grid[-1] == 1.0 and len(grid) == 17


def test_p_prime_maps_to_the_nearest_index_in_log_terms():
    grid = p_prime_grid()
    assert p_prime_to_index(grid, grid).tolist() == list(range(17))
    # the log midpoint of grid[5] (1.17e-3) and grid[6] (2.15e-3) is 1.58e-3, below their arithmetic mean 1.66e-3
    assert p_prime_to_index(1.55e-3, grid) == 5
    assert p_prime_to_index(1.62e-3, grid) == 6
    assert p_prime_to_index(0.0, grid) == 0
    assert p_prime_to_index(5e-5, grid) == 0  # more than half a step below 1e-4
    assert p_prime_to_index(9e-5, grid) == 1
    with pytest.raises(ValueError, match="discrete index"):
        p_prime_to_index(3.0, grid)


def _abr_obs(last_quality: int, buffer_s: float, chunk_index: int) -> AbrObservation:
    return AbrObservation(
        chunk_index=chunk_index,
        chunks_total=48,
        last_quality=last_quality,
        buffer_s=buffer_s,
        rebuffer_s=0.0,
        chunk_duration_s=4.0,
        throughput_bps=np.arange(1, 9) * 1e6,
        download_time_s=np.arange(1, 9) * 0.5,
        bitrates_bps=BITRATES_BPS,
        future_chunk_bytes=np.arange(5 * N_LEVELS, dtype=float).reshape(5, N_LEVELS) * 1e5,
    )


def test_abr_features_follow_netllm_layout():
    spec = feature_spec("abr", abr_fields())
    assert [t.name for t in spec.tokens] == [
        "last_bitrate",
        "buffer",
        "throughput_history",
        "download_time_history",
        "next_chunk_bytes",
        "chunks_left",
        "download_estimate",
    ]
    raw = spec.raw_features(np.stack([_abr_obs(2, 7.5, 10).to_vector(), _abr_obs(0, 1.0, 47).to_vector()]))
    assert raw.shape == (2, 1 + 1 + 8 + 8 + N_LEVELS + 1 + N_LEVELS)
    assert raw[0, 0] == pytest.approx(1.85)  # Mbps of level 2
    assert raw[1, 0] == pytest.approx(0.3)
    assert raw[0, 1] == 7.5
    np.testing.assert_allclose(raw[0, 2:10], np.log1p(np.arange(1, 9) * 1e6))
    np.testing.assert_allclose(raw[0, 18:22], np.log1p(np.arange(N_LEVELS) * 1e5))  # chunk 0 of the horizon
    left = 18 + N_LEVELS
    assert raw[0, left] == 38 and raw[1, left] == 1
    harmonic_bps = 5 / sum(1 / (m * 1e6) for m in range(4, 9))  # RobustMPC's window: the last five
    np.testing.assert_allclose(raw[0, left + 1 :], np.log1p(np.arange(N_LEVELS) * 1e5 * 8 / harmonic_bps))


def test_abr_specs_saved_before_the_download_estimate_still_extract():
    spec = feature_spec("abr", abr_fields())
    old = FeatureSpec.from_dict({**spec.to_dict(), "tokens": [asdict(t) for t in spec.tokens[:-1]]})
    obs = np.stack([_abr_obs(2, 7.5, 10).to_vector()])
    np.testing.assert_array_equal(old.raw_features(obs), spec.raw_features(obs)[:, : old.n_values])


def test_aqm_histories_are_oldest_first_and_zero_padded():
    spec = feature_spec("aqm", aqm_fields(), history_ticks=4)
    obs = np.zeros((6, len(aqm_fields())))
    obs[:, aqm_fields().index("utilisation")] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    raw = spec.raw_features(obs)
    names = [t.name for t in spec.tokens]
    start = sum(t.width for t in spec.tokens[: names.index("utilisation_history")])
    hist = raw[:, start : start + 4]
    np.testing.assert_allclose(hist[0], [0, 0, 0, 0.1])
    np.testing.assert_allclose(hist[5], [0.3, 0.4, 0.5, 0.6])
    assert len(spec.tokens) == 9


def test_normalisation_uses_pool_statistics_and_clips():
    spec = feature_spec("aqm", aqm_fields())
    with pytest.raises(RuntimeError, match="no statistics"):
        spec.normalise(np.zeros((1, spec.n_values)))
    rng = np.random.default_rng(0)
    obs = np.abs(rng.normal(size=(200, len(aqm_fields())))) * 1e9  # counter-sized values
    fitted = spec.fit(spec.raw_features(obs))
    z = fitted.normalise(fitted.raw_features(obs))
    assert z.dtype == np.float32 and np.all(np.abs(z) <= FEATURE_CLIP)
    # scalar features: each standardised on its own; series share one statistic across the history
    assert abs(z[:, 0].mean()) < 1e-4 and z[:, 0].std() == pytest.approx(1.0, rel=1e-3)
    series = spec.tokens[-1]
    assert len(set(fitted.mean[-series.width :])) == 1
    huge = fitted.normalise(np.full((1, spec.n_values), 1e12))
    assert np.all(huge == FEATURE_CLIP)
    assert FeatureSpec.from_dict(fitted.to_dict()) == fitted


def test_unknown_fields_and_tasks_fail_early():
    with pytest.raises(KeyError, match="chunks_total"):
        feature_spec("abr", [n for n in abr_fields() if n != "chunks_total"])
    with pytest.raises(ValueError, match="task must be one of"):
        feature_spec("cc", aqm_fields())
    assert len(AqmObservation.field_names()) == len(aqm_fields())


def test_reward_scale_is_a_fixed_constant_with_stalls_clipped():
    scale = RewardScale.for_task("abr", max_return=10.0)
    # a top-rung chunk scores 1; a 25 s stall is clipped at the floor instead of setting the scale
    np.testing.assert_allclose(scale.scale_rewards([4.3, 0.0, -4.3, -107.5]), [1.0, 0.0, -1.0, -2.0])
    np.testing.assert_allclose(scale.returns_to_go(np.array([4.3, 4.3, -4.3])), [0.1, 0.0, -0.1])
    assert scale.start_return == 10.0 and RewardScale.for_task("abr", 10.0, target_return=7.0).start_return == 7.0
    assert RewardScale.for_task("aqm", 0.0).return_divisor == 1.0
    with pytest.raises(ValueError, match="scale must be > 0"):
        RewardScale(-1.0, 0.0, 1.0)


def test_returns_keep_good_and_bad_episodes_apart():
    """Episodes of a careful and a careless policy on the same link: min-max scaling over a pool with one
    long stall squeezed their returns together; the fixed scale keeps them far apart."""
    rng = np.random.default_rng(0)
    good = 1.2 + rng.normal(0, 0.1, 47)  # steady ~1.2 Mbps, no stall
    bad = 1.8 + rng.normal(0, 0.1, 47) - 4.3 * rng.exponential(0.3, 47)  # greedier, short stalls
    outlier = np.concatenate([good[:46], [1.2 - 4.3 * 25.0]])  # one 25 s stall
    scale = RewardScale.for_task("abr")
    good_return, bad_return = scale.scale_rewards(good).sum(), scale.scale_rewards(bad).sum()
    spread = (good_return - bad_return) / abs(good_return)
    assert spread > 0.3, (good_return, bad_return)
    # what min-max scaling over the pool did: the gap shrinks to a few percent of the return
    pool = np.concatenate([good, bad, outlier])
    lo, hi = pool.min(), pool.max()
    minmax = [((r - lo) / (hi - lo)).sum() for r in (good, bad)]
    assert (minmax[0] - minmax[1]) / minmax[0] < 0.05 < spread


def test_two_hot_labels_keep_a_continuous_p_prime_in_their_expected_log():
    """Weights on the two neighbouring grid values whose expected log p' is log p' (p' = 0 one step below
    the smallest value, as the expected decoding counts it); grid values and 0 are one-hot."""
    grid = p_prime_grid(17)
    log_grid = np.log10(grid[1:])
    anchors = np.concatenate([[log_grid[0] - (log_grid[1] - log_grid[0])], log_grid])
    p = np.array([0.05, 0.3, 2e-4, 0.99, 7e-5])
    w = p_prime_two_hot(p, grid)
    assert w.shape == (5, 17) and np.allclose(w.sum(axis=1), 1.0) and (w >= 0).all()
    assert ((w > 0).sum(axis=1) == 2).all()
    np.testing.assert_allclose(w @ anchors, np.log10(p))
    assert (np.abs(np.argmax(w, axis=1) - p_prime_to_index(p, grid)) == 0).all()  # the heavier is the nearest
    np.testing.assert_array_equal(p_prime_two_hot(grid, grid), np.eye(17))
    assert p_prime_two_hot(1e-9, grid)[0] == 1.0
    with pytest.raises(ValueError, match="p' values in"):
        p_prime_two_hot(1.5, grid)
