"""Experience pools from decisions.parquet: alignment, episode splits, shadows, round trip."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from llm.features import RewardScale, p_prime_grid, p_prime_to_index, p_prime_two_hot
from llm.pool import MANIFEST_FILE, STEPS_FILE, build_pool, load_pool
from tests.llm.synthetic import abr_fields, abr_rows, aqm_fields, aqm_rows, expert_quality, write_decisions


def test_abr_pool_aligns_rewards_and_round_trips(tmp_path):
    rows_a = abr_rows(12, seed=0, control_point="abr-0", shadow=True)
    rows_b = abr_rows(7, seed=1, control_point="abr-1", episodes=2)
    files = [
        write_decisions(tmp_path / "a.parquet", "abr", abr_fields(), rows_a),
        write_decisions(tmp_path / "b.parquet", "abr", abr_fields(), rows_b),
    ]
    pool = build_pool(files, tmp_path / "pool", "abr")
    acting_a = [r for r in rows_a if r["role"] == "acting"]

    assert [len(e) for e in pool.episodes] == [11, 6, 6]  # n rows -> n - 1 transitions; b splits at done
    first = pool.episodes[0]
    np.testing.assert_array_equal(first.obs, np.stack([r["obs"] for r in acting_a[:-1]]))
    assert first.actions.tolist() == [r["action"][0] for r in acting_a[:-1]]
    assert first.rewards.tolist() == [r["reward"] for r in acting_a[1:]]  # reward of row t+1 belongs to action t
    assert first.actions.tolist() == [expert_quality(r["obs"][abr_fields().index("buffer_s")]) for r in acting_a[:-1]]
    assert {e.role for e in pool.episodes} == {"acting"}

    manifest = json.loads((tmp_path / "pool" / MANIFEST_FILE).read_text())
    assert manifest["task"] == "abr" and manifest["obs_fields"] == abr_fields() and manifest["n_actions"] == 4
    assert manifest["counts"]["episodes"] == 3 and manifest["counts"]["steps"] == 23
    assert manifest["action_values"] is None
    assert len(manifest["features"]["mean"]) == pool.features.n_values
    returns = [RewardScale.for_task("abr").scale_rewards(e.rewards).sum() for e in pool.episodes]
    assert manifest["rewards"] == {"floor": -8.6, "scale": 4.3, "max_return": max(returns), "target_return": None}
    assert b"pickle" not in (tmp_path / "pool" / STEPS_FILE).read_bytes()

    loaded = load_pool(tmp_path / "pool")
    assert loaded.manifest == pool.manifest
    for a, b in zip(pool.episodes, loaded.episodes, strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert (a.source, a.control_point, a.policy) == (b.source, b.control_point, b.policy)


def test_shadow_rows_become_episodes_only_when_asked(tmp_path):
    path = write_decisions(tmp_path / "d.parquet", "abr", abr_fields(), abr_rows(6, seed=2, shadow=True))
    pool = build_pool([path], tmp_path / "pool", "abr", roles=("acting", "shadow"))
    assert [(e.policy, e.role) for e in pool.episodes] == [("expert", "acting"), ("lowest", "shadow")]
    assert pool.episodes[1].actions.tolist() == [0] * 5
    np.testing.assert_array_equal(pool.episodes[0].rewards, pool.episodes[1].rewards)
    assert pool.manifest["counts"]["steps_by_policy"] == {"expert": 5, "lowest": 5}
    relabelled = build_pool([path], tmp_path / "shadow", "abr", roles=("shadow",))
    assert [(e.policy, e.role) for e in relabelled.episodes] == [("lowest", "shadow")]
    np.testing.assert_array_equal(relabelled.episodes[0].obs, pool.episodes[0].obs)  # the acting policy's states
    # a sequence model's history is what the acting policy really did; the labels are the shadow's
    shadow = relabelled.episodes[0]
    assert shadow.actions.tolist() == [0] * 5
    np.testing.assert_array_equal(shadow.history_actions, pool.episodes[0].actions)
    reloaded = load_pool(tmp_path / "shadow").episodes[0]
    np.testing.assert_array_equal(reloaded.history_actions, pool.episodes[0].actions)
    assert reloaded.actions.tolist() == [0] * 5
    flat = relabelled.flat(relabelled.features, relabelled.rewards, max_timestep=10)
    np.testing.assert_array_equal(flat["history_actions"], pool.episodes[0].actions)
    assert build_pool([path], tmp_path / "acting", "abr").manifest["roles"] == ["acting"]
    with pytest.raises(ValueError, match="roles"):
        build_pool([path], tmp_path / "bad", "abr", roles=("teacher",))


def test_aqm_pool_maps_p_prime_to_grid_indices(tmp_path):
    rows = aqm_rows(30, seed=3)
    path = write_decisions(tmp_path / "aqm.parquet", "aqm", aqm_fields(), rows, acting="pi2")
    pool = build_pool([path], tmp_path / "pool", "aqm")
    grid = p_prime_grid(17)
    assert pool.n_actions == 17 and pool.manifest["action_values"] == grid.tolist()
    expected = p_prime_to_index(np.array([r["action"][0] for r in rows[:-1]]), grid)
    np.testing.assert_array_equal(pool.episodes[0].actions, expected)
    flat = pool.flat(pool.features, pool.rewards, max_timestep=10)
    assert flat["states"].shape == (29, pool.features.n_values)
    assert flat["timesteps"].max() == 10
    # rewards are penalties (-qdelay): the only episode's return is the largest and negative, so it scales
    # to -1, and what is left to go rises toward 0 as the penalties are collected
    assert flat["returns"][0] == pytest.approx(-1.0)
    assert np.all(np.diff(flat["returns"]) >= -1e-7)


def test_aqm_pool_keeps_two_hot_labels_of_a_continuous_controller(tmp_path):
    """p' between grid values keeps its two-hot weights (stored, reloaded, flattened for training);
    a controller on the grid gets none, and a pool mixing the two is one-hot where the p' was on the grid."""
    grid = p_prime_grid(17)
    rows = aqm_rows(30, seed=3)
    continuous = write_decisions(tmp_path / "c.parquet", "aqm", aqm_fields(), rows, acting="pi2")
    on_grid_rows = [r | {"action": [float(grid[p_prime_to_index(r["action"][0], grid)])]} for r in aqm_rows(20, seed=4)]
    on_grid = write_decisions(tmp_path / "g.parquet", "aqm", aqm_fields(), on_grid_rows, acting="pi2")
    pool = build_pool([continuous, on_grid], tmp_path / "pool", "aqm")
    soft, hard = pool.episodes
    np.testing.assert_allclose(soft.soft, p_prime_two_hot(np.array([r["action"][0] for r in rows[:-1]]), grid))
    assert hard.soft is None
    reloaded = load_pool(tmp_path / "pool")
    np.testing.assert_allclose(reloaded.episodes[0].soft, soft.soft)
    assert reloaded.episodes[1].soft is None
    flat = reloaded.flat(reloaded.features, reloaded.rewards, max_timestep=10)
    np.testing.assert_allclose(flat["soft"][:29], soft.soft, rtol=1e-6)
    np.testing.assert_array_equal(flat["soft"][29:], np.eye(17)[hard.actions])
    assert "soft" not in build_pool([on_grid], tmp_path / "grid-only", "aqm").flat(
        pool.features, pool.rewards, max_timestep=10)


def test_pool_refuses_mixed_or_wrong_inputs(tmp_path):
    abr = write_decisions(tmp_path / "abr.parquet", "abr", abr_fields(), abr_rows(4, seed=0))
    aqm = write_decisions(tmp_path / "aqm.parquet", "aqm", aqm_fields(), aqm_rows(4, seed=0))
    with pytest.raises(ValueError, match="control is 'abr', not 'aqm'"):
        build_pool([abr], tmp_path / "p", "aqm")
    pq.write_table(pq.read_table(abr).replace_schema_metadata({}), tmp_path / "plain.parquet")
    with pytest.raises(ValueError, match="no 'obs_fields'"):
        build_pool([tmp_path / "plain.parquet"], tmp_path / "p", "abr")
    rows = aqm_rows(4, seed=0)
    rows[1]["action"] = [7.0]  # a discrete index where p' was expected
    bad = write_decisions(tmp_path / "bad.parquet", "aqm", aqm_fields(), rows)
    with pytest.raises(ValueError, match="p' values in"):
        build_pool([bad], tmp_path / "p", "aqm")
    with pytest.raises(ValueError, match="control is 'aqm', not 'abr'"):
        build_pool([abr, aqm], tmp_path / "p", "abr")
    with pytest.raises(FileNotFoundError, match="not an experience pool"):
        load_pool(tmp_path)


def test_pool_reads_the_agent_log_with_an_empty_final_action(tmp_path):
    """agents.serve ends each episode with a done row whose action list is empty."""
    from agents.decisions import DecisionLog

    fields = aqm_fields()
    path = tmp_path / "decisions.parquet"
    log = DecisionLog(path, "aqm", "aqm", fields, "pi2")
    for step in range(5):
        log.append(step=step, sim_time_s=0.016 * step, policy="pi2", role="acting", obs=np.full(len(fields), 0.01),
                   action=[0.05 * (step + 1)], reward=0.1 * step, decision_ms=0.01)
    log.append(step=5, sim_time_s=0.08, policy="pi2", role="acting", obs=np.full(len(fields), 0.01), action=(),
               reward=0.5, decision_ms=float("nan"), done=True)
    log.close()
    pool = build_pool([path], tmp_path / "pool", "aqm")
    assert pool.manifest["counts"]["steps"] == 5
    assert pool.manifest["counts"]["episodes"] == 1
