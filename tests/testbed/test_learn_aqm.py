"""The AQM recipe end to end on a tiny model: teacher runs, demonstrations, closed-loop selection against
DualPI2's frontier, a DAgger round relabelled by the mix's teacher, and the checkpoint acting over the wire."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from agents.protocol.control_points import AqmObservation, aqm_action_grid
from agents.serve import aqm_grid_index
from llm.inference import load_decider
from llm.pool import load_pool
from testbed.aqm_cells import Cell, Controller, RunSettings, run_cell
from testbed.aqm_mix import Mix
from testbed.learn_aqm import AqmRecipe, TeacherSpec, grid_actions_as_p_prime, learn, relabel

pytestmark = pytest.mark.slow

MIX = Mix(rate_mbps=20, rtt_ms=10, l4s_flows=1, classic_flows=1)


def _recipe(**update) -> AqmRecipe:
    data = {
        "name": "aqm-test",
        "duration_s": 1.5,
        "warmup_s": 0.5,
        "train": {"rates_mbps": [20], "rtts_ms": [10, 20], "l4s_flows": [1], "classic_flows": [1],
                  "video": [False], "udp": [False], "count": 1, "seed": 0},
        "validation": [{"rate_mbps": 20, "rtt_ms": 30, "l4s_flows": 1, "classic_flows": 1}],
        "frontier_targets_ms": [5, 15],
        "teachers": [{"policy": "pi2", "target_ms": 5}, {"policy": "pi2", "target_ms": 5, "gains": "rtt"}],
        "pool": {"keep_best": 1, "history_ticks": 4},
        "dagger": {"rounds": 1, "seeds": [11], "training": {"max_steps": 2, "eval_every": 2}},
        "training": {"window": 4, "channels": 16, "batch_size": 4, "max_steps": 4, "eval_every": 4,
                     "return_conditioning": False, "max_timestep": 0},
        "threads": 1,
        "jobs": 2,
    }
    return AqmRecipe.model_validate({**data, **update})


@pytest.mark.parametrize("labels", ["grid", "continuous"])
def test_recipe_learns_selects_and_ships_a_checkpoint(tmp_path, labels):
    torch.set_num_threads(1)
    recipe = _recipe(pool={"keep_best": 1, "history_ticks": 4, "labels": labels})
    lines: list[str] = []
    trail = learn(recipe, tmp_path / "out", log=lines.append)

    # Teachers: every (mix, seed, teacher) ran; one demonstration per mix and seed, by mean reward.
    assert trail["teacher_runs"] == 2 and trail["demonstrations"] == 1
    (mix_name, teacher), = trail["mix_teacher"].items()
    assert mix_name in trail["training_mixes"] and teacher in ("pi2-5ms", "pi2-rtt-5ms")

    # Two rounds, each selected in closed loop on the validation mix (packet-level runs of the candidate).
    assert [r["round"] for r in trail["rounds"]] == [0, 1]
    for r in trail["rounds"]:
        best = r["best_validation"]
        assert np.isfinite(best["score"]) and f"{recipe.validation[0].name}_c_delay_ms" in best
    passes = sorted((tmp_path / "out" / "selection").glob("pass-*"))
    assert len(passes) == 2
    assert all((p / recipe.validation[0].name / "candidate" / "101" / "summary.json").is_file() for p in passes)

    # DAgger: the round-1 pool holds the teacher's demonstrations plus its labels on the policy's own states.
    pool = load_pool(tmp_path / "out" / "pool-1")
    roles = {(e.policy, e.role) for e in pool.episodes}
    assert roles == {("pi2", "acting"), (teacher, "shadow")}
    assert trail["rounds"][1]["label_files"] == 1
    # grid labels: the teachers acted on the learner's grid; continuous: their own p', kept as two-hot weights
    assert all(e.soft is not None for e in pool.episodes) == (labels == "continuous")
    assert all(e.soft is None for e in pool.episodes) == (labels == "grid")

    # The DAgger round's policy acted over the wire, every decision on the record.
    learner = pd.read_parquet(next((tmp_path / "out" / "dagger-1" / "runs").rglob("decisions.parquet")))
    assert set(learner["policy"]) == {"llm"} and len(learner) > 50
    # ... acting as the recipe says: the p' at its distribution's expected log p', between grid values
    applied = np.concatenate(learner.loc[learner["role"] == "acting", "action"].to_numpy())
    assert recipe.decode == "expected" and not np.isin(applied, aqm_action_grid(17)).all()

    # The selected checkpoint stands alone (its tiny backbone inside) and decides p' on the grid.
    checkpoint = tmp_path / "out" / "checkpoint"
    decider = load_decider(checkpoint, device="cpu")
    obs = dict(zip(AqmObservation.field_names(), np.full(len(AqmObservation.field_names()), 0.01), strict=True))
    assert 0 <= decider.decide(obs, 0.0) < decider.n_actions == 17
    config = json.loads((checkpoint / "policy_config.json").read_text())
    assert {key: config[key] for key in recipe.acting()} == recipe.acting()
    stored = json.loads((tmp_path / "out" / "learn.json").read_text())
    assert stored["wall_s"] > 0 and stored["peak_rss_mib"] > 0


def test_relabel_writes_the_teachers_answer_from_the_learners_states(tmp_path):
    """A fixed p' too low for the mix acts; the PI2 expert labels each state with its own step from there."""
    grid = aqm_action_grid(17)
    settings = RunSettings(duration_s=1.5, warmup_s=0.2)
    result = run_cell(Cell(MIX, Controller("fixed", p_prime=float(grid[9]), grid=17), 1), tmp_path / "runs", settings)
    assert result.status == "ok", result.error
    acting = pd.read_parquet(result.decisions)
    acting = acting[acting["role"] == "acting"]
    assert set(acting["action"].map(tuple)) == {(9.0,), ()}  # a discrete control point logs grid indices

    demo = pd.read_parquet(grid_actions_as_p_prime(result.decisions, 17, tmp_path / "demo.parquet"))
    assert set(demo["action"].map(tuple)) == {(float(grid[9]),), ()}

    teacher = TeacherSpec(policy="pi2", target_ms=5)
    labels = pd.read_parquet(relabel(result.decisions, teacher.expert(MIX), teacher.label, 17,
                                     tmp_path / "labels.parquet"))
    assert set(labels["role"]) == {"shadow"} and set(labels["policy"]) == {"pi2-5ms"}
    assert len(labels) == len(acting) and (labels["reward"].to_numpy() == acting["reward"].to_numpy()).all()
    applied = [aqm_grid_index(AqmObservation.from_vector(o).p_prime, 17) for o in acting["obs"]]
    label_index = [aqm_grid_index(a[0], 17) for a in labels["action"]]
    assert all(float(grid[i]) == a[0] for i, a in zip(label_index, labels["action"], strict=True))
    # the queue outgrows the target under the fixed p': from every such state the expert steps p' up a little
    later = np.array(label_index[len(label_index) // 2:]) - np.array(applied[len(applied) // 2:])
    assert later.min() >= 1 and later.max() <= 3
    # a PI2 integrating only its own answers would drift to p' = 1, far from the learner's states; the expert does not
    drifting = teacher.expert(MIX)
    own = [aqm_grid_index(drifting.act(AqmObservation.from_vector(o)), 17) for o in acting["obs"]]
    assert max(own) >= 15

    # continuous labels: PI2's own p', one update from the p' in force at every state (off the grid)
    cont = pd.read_parquet(relabel(result.decisions, teacher.expert(MIX), teacher.label, 17,
                                   tmp_path / "continuous.parquet", continuous=True))
    states = [AqmObservation.from_vector(o) for o in acting["obs"]]
    for prev, obs, action in zip(states[1:-1], states[2:], cont["action"].iloc[2:], strict=False):
        if len(action):
            step = 0.16 * (obs.qdelay_s - 0.005) + 3.2 * (obs.qdelay_s - prev.qdelay_s)
            assert action[0] == pytest.approx(min(max(obs.p_prime + step, 0.0), 1.0))
    assert not set(a[0] for a in cont["action"] if len(a)) <= set(grid.tolist())


def test_recipe_refuses_leaks_between_sets():
    with pytest.raises(ValueError, match="both validation and evaluation"):
        _recipe(evaluation=[{"rate_mbps": 20, "rtt_ms": 30, "l4s_flows": 1, "classic_flows": 1}]).check()
    # a validation mix is never drawn for training, even where the grid holds it
    recipe = _recipe(validation=[{"rate_mbps": 20, "rtt_ms": 10, "l4s_flows": 1, "classic_flows": 1}])
    assert [m.rtt_ms for m in recipe.training_mixes()] == [20]
    with pytest.raises(ValueError, match="evaluation seeds"):
        _recipe(evaluation=[{"rate_mbps": 25, "rtt_ms": 10, "l4s_flows": 1, "classic_flows": 1}],
                evaluation_seeds=[1]).check()
    with pytest.raises(ValueError, match="reward"):
        _recipe(reward={"c_dealy": 1.0}).check()


def test_teachers_with_fixed_gains_act_with_them():
    """A PI2 teacher with its own gains (beyond Linux's defaults) runs and relabels with those gains."""
    fast = TeacherSpec(policy="pi2", target_ms=2, alpha_hz=0.32, beta_hz=6.4)
    assert fast.label == "pi2-a0.32-b6.4-2ms"
    assert fast.controller(MIX, 17) == Controller("pi2", target_ms=2, alpha_hz=0.32, beta_hz=6.4, grid=17)
    # the same queue, 8 ms above the target and 2 ms longer than a tick ago: the fast expert steps twice as far
    obs = AqmObservation.from_vector(np.zeros(len(AqmObservation.field_names())))
    steps = []
    for spec in (fast, TeacherSpec(policy="pi2", target_ms=2)):
        expert = spec.expert(MIX)
        expert.qdelay_prev_s = 0.008
        steps.append(expert.act(replace(obs, qdelay_s=0.010)))
    assert steps[0] == pytest.approx(2 * steps[1]) and steps[1] == pytest.approx(0.16 * 0.008 + 3.2 * 0.002)
    with pytest.raises(ValueError, match="both alpha_hz and beta_hz"):
        TeacherSpec(policy="pi2", target_ms=2, alpha_hz=0.32)
    with pytest.raises(ValueError, match="fixed gains"):
        TeacherSpec(policy="pi2", target_ms=2, gains="rtt", alpha_hz=0.32, beta_hz=6.4)
