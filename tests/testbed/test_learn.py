"""Learning from a recipe, end to end on small data: teachers' experience, DAgger relabels, closed-loop selection,
a checkpoint with its model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from emulation.video.traces import DEFAULT_TRACE_DIR
from testbed.learn import Recipe, _pool_sources, learn

RATES_MBPS = np.tile([0.6, 2.5, 1.2, 0.3, 4.0], 20)


def _recipe(tmp_path, **changes) -> Recipe:
    traces = tmp_path / "train-traces"
    traces.mkdir(exist_ok=True)
    for i in range(2):
        rates = np.roll(RATES_MBPS, i)
        (traces / f"t{i}").write_text("".join(f"{4 * k} {r}\n" for k, r in enumerate(rates)))
    data = {
        "name": "tiny-test", "model": {"kind": "mlp"}, "traces": [str(traces)], "teachers": ["rollout"],
        "dagger": {"rounds": 1, "teacher": "rollout"}, "workers": 1, "threads": 1,
        "validation": [str(DEFAULT_TRACE_DIR)],
        "training": {"epochs": 3, "batch_size": 32, "eval_every": 1000, "objective": "action_values"},
    } | changes
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return Recipe.load(path)


@pytest.mark.slow
def test_a_recipe_runs_end_to_end_and_dagger_relabels_the_learner_states(tmp_path):
    trail = learn(_recipe(tmp_path, stall_guard_s=1.0, seed=3), tmp_path / "out", log=lambda _: None)
    out = tmp_path / "out"
    assert [r["round"] for r in trail["rounds"]] == [0, 1] and trail["rounds"][1]["dagger_files"] == 1
    # DAgger: the learner acted, the teacher shadowed; its rows are the teacher's actions on the learner's states
    decisions = pd.read_parquet(out / "dagger-1" / "learned" / "decisions.parquet")
    rows = decisions[~decisions["done"]]
    acting, shadow = rows[rows["role"] == "acting"], rows[rows["role"] == "shadow"]
    assert set(acting["policy"]) == {"llm"} and set(shadow["policy"]) == {"rollout"} and len(acting) == len(shadow)
    assert (acting["obs"].map(tuple).to_numpy() == shadow["obs"].map(tuple).to_numpy()).all()
    scores = shadow["info"].map(lambda i: json.loads(i)["action_scores"])
    assert all(np.argmax(s) == a[0] for s, a in zip(scores, shadow["action"], strict=True))
    pool = json.loads((out / "pool-1" / "manifest.json").read_text())
    assert pool["counts"]["steps_by_policy"]["rollout"] > 0 and pool["roles"] == ["acting", "shadow"]
    # a pool grown from this one rereads the DAgger file's labels only, never the learner's own actions
    assert _pool_sources(out / "pool-1") == [(Path(pool["sources"][0]), ("acting",)),
                                             (Path(pool["sources"][1]), ("shadow",))]
    assert "llm" not in pool["counts"]["steps_by_policy"]
    # the shipped form: checkpoint, recipe and model card
    checkpoint = out / "checkpoint"
    for name in ("policy_config.json", "policy.safetensors", "recipe.yaml", "README.md"):
        assert (checkpoint / name).is_file()
    card = (checkpoint / "README.md").read_text()
    assert "## Results" in card and "mpc" in card and "Licence" in card
    # it acts behind the recipe's stall guard, and its results show the bare model beside it
    config = json.loads((checkpoint / "policy_config.json").read_text())
    assert config["stall_guard_s"] == 1.0
    # the recipe's seed seeds the model too, not only the sessions
    assert config["training"]["settings"]["seed"] == 3
    assert "| unguarded |" in card
    results = trail["evaluation"]["traces::all"]
    assert set(results["qoe"]) == {"learned", "unguarded", "mpc"} and results["qoe"]["mpc"] > 0


def test_recipes_refuse_validation_data_and_unknown_teachers(tmp_path):
    with pytest.raises(ValueError, match="never enter a pool"):
        _recipe(tmp_path, traces=["valid-fcc"])
    with pytest.raises(ValueError, match="unknown teacher"):
        _recipe(tmp_path, teachers=["psychic"])
    with pytest.raises(ValueError, match="model.kind"):
        _recipe(tmp_path, model={"kind": "svm"})


def _sigterm_is_default(_: int) -> bool:
    import signal

    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_forked_players_leave_sigterm_to_its_default_while_the_parent_turns_it_into_interrupted():
    """The pool ends its workers with SIGTERM; the parent's handler would make each print a traceback."""
    import multiprocessing
    import signal

    from testbed.learn import _default_termination
    from testbed.lifecycle import stop_signals_interrupt

    with stop_signals_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        with multiprocessing.get_context("fork").Pool(2, initializer=_default_termination) as pool:
            assert pool.map(_sigterm_is_default, range(2)) == [True, True]
        with multiprocessing.get_context("fork").Pool(1) as pool:  # what a worker inherits without it
            assert pool.map(_sigterm_is_default, range(1)) == [False]
