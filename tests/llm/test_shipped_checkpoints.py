"""The shipped policies (``llm/checkpoints``) load and decide in CI without training: the contract the
``--abr llm`` / ``--aqm llm`` agents rely on (fields, action grids), determinism, size, model card, and the
direction of their answers on situations whose right answer is not in doubt."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.llm_agent import LlmPolicy
from agents.protocol.control_points import AbrObservation, AqmObservation, aqm_action_grid
from emulation.video import BandwidthTrace, default_manifest
from llm.inference import load_decider
from llm.shipped import DEFAULTS_FILE, default_checkpoint, shipped
from testbed.chunksim import run_session
from testbed.learn import Recipe
from testbed.learn_aqm import AqmRecipe, recipe_task

DEFAULTS = json.loads(DEFAULTS_FILE.read_text())


def test_every_default_names_a_shipped_checkpoint_of_its_task():
    assert {"abr", "aqm"} <= set(DEFAULTS)
    for task in DEFAULTS:
        path = default_checkpoint(task)
        assert path is not None and path.name in shipped()
        assert json.loads((path / "policy_config.json").read_text())["task"] == task


@pytest.mark.parametrize("name", sorted(shipped()))
def test_a_shipped_checkpoint_is_small_and_documented(name):
    path = shipped()[name]
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size < 8e6, f"{name}: {size / 1e6:.1f} MB"
    card = (path / "README.md").read_text()
    assert (path / "recipe.yaml").is_file()
    for section in ("## Data", "## Recipe", "## Results", "## Licence"):
        assert section in card, f"{name}: model card lacks {section}"


# --- ABR ---------------------------------------------------------------------------------------------------


def _constant(mbps: float) -> BandwidthTrace:
    return BandwidthTrace(np.array([0.0, 1000.0]), np.array([mbps * 1e6, mbps * 1e6]), name=f"flat-{mbps:g}")


@pytest.mark.parametrize("name", sorted(n for n in shipped() if n.startswith("abr-")))
def test_a_shipped_abr_policy_plays_deterministically_and_follows_the_link(name):
    manifest = default_manifest()
    top = manifest.n_levels - 1

    def play(mbps: float) -> np.ndarray:
        result = run_session(LlmPolicy("abr", checkpoint=str(shipped()[name]), device="cpu"), _constant(mbps),
                             manifest)
        return result.video["quality"].to_numpy()

    slow, fast = play(0.4), play(20.0)
    assert np.array_equal(play(20.0), fast)
    # a link far above the top bitrate settles at the top; one below the second level mostly stays at the
    # bottom (a full buffer may buy the odd chunk above it)
    assert (fast[-20:] == top).mean() >= 0.9
    assert (slow[-20:] == 0).mean() >= 0.75


def test_the_default_abr_policy_acts_behind_its_stall_guard():
    """The shipped default lowers choices that would stall on a 3G-like link (levels of 0.3-4 Mbps held
    5-20 s); ``stall_guard_s=none`` plays the bare model, which stalls there."""
    manifest = default_manifest()
    rng = np.random.default_rng(0)
    holds_s, levels_mbps = rng.uniform(5, 20, 40), rng.uniform(0.3, 4.0, 40)
    collapse = BandwidthTrace(np.concatenate([[0.0], np.cumsum(holds_s)[:-1]]), levels_mbps * 1e6, name="3g-like")
    guarded = LlmPolicy("abr", device="cpu")
    bare = LlmPolicy("abr", device="cpu", stall_guard_s="none")
    assert guarded.guard is not None and guarded.guard.margin_s == 1.0 and bare.guard is None
    with_guard, without = (run_session(p, collapse, manifest).video for p in (guarded, bare))
    assert guarded.guard.lowered > 0
    assert with_guard["rebuffer_s"].sum() < without["rebuffer_s"].sum()


class _Watched(LlmPolicy):
    """The shipped policy, noting after each decision what it played and what the model will read as its last
    action."""

    def act(self, obs):
        quality = super().act(obs)
        self.trail.append((quality, self.decider.previous_action))
        return quality


def test_a_lowered_choice_is_the_history_the_model_reads():
    """Training episodes carry the qualities really played as action tokens; behind the guard, the quality
    played (not the model's bolder choice) is what the next step sees."""
    rng = np.random.default_rng(1)
    holds_s, levels_mbps = rng.uniform(5, 20, 40), rng.uniform(0.3, 4.0, 40)
    levels_mbps[1::3] = 0.15  # every third hold collapses without warning
    collapse = BandwidthTrace(np.concatenate([[0.0], np.cumsum(holds_s)[:-1]]), levels_mbps * 1e6, name="3g-like")
    policy = _Watched("abr", device="cpu")
    policy.trail = []
    run_session(policy, collapse, default_manifest())
    assert policy.guard.lowered > 0
    assert all(played == token for played, token in policy.trail)


def test_the_abr_decider_reads_the_control_points_fields():
    decider = load_decider(default_checkpoint("abr"), device="cpu")
    manifest = default_manifest()
    assert decider.task == "abr" and decider.n_actions == manifest.n_levels
    assert decider.obs_fields == AbrObservation.field_names(manifest.n_levels)


# --- AQM ---------------------------------------------------------------------------------------------------

AQM_FIELDS = AqmObservation.field_names()


def _aqm_obs(qdelay_s: float, p_prime: float, utilisation: float = 0.98, rate_bps: float = 50e6) -> dict:
    """A DualPI2 state with the classic head sojourn at ``qdelay_s`` and a near-empty L queue."""
    c_bytes = qdelay_s * rate_bps / 8
    values = {
        "qdelay_s": qdelay_s, "c_sojourn_s": qdelay_s, "l_sojourn_s": 3e-4,
        "c_len_pkts": c_bytes / 1500, "l_len_pkts": 2.0, "c_len_bytes": c_bytes, "l_len_bytes": 3000.0,
        "c_arrival_bps": 0.5 * rate_bps, "l_arrival_bps": 0.5 * rate_bps, "departure_bps": utilisation * rate_bps,
        "utilisation": utilisation, "c_drops": 0.0, "c_marks": 0.0, "l_marks": 5.0, "l_drops": 0.0,
        "tail_drops": 0.0, "p_prime": p_prime, "interval_s": 0.016,
    }
    return {name: float(values[name]) for name in AQM_FIELDS}


@pytest.fixture(scope="module")
def aqm_decider():
    return load_decider(default_checkpoint("aqm"), device="cpu")


def _episode(decider, delays_s: list[float]) -> list[int]:
    """Decisions over a delay trajectory, the p' in force being the policy's own previous answer."""
    decider.reset()
    grid = decider.action_values
    p_prime, out = 0.0, []
    for q in delays_s:
        index = decider.decide(_aqm_obs(q, p_prime), 0.9)
        out.append(index)
        p_prime = float(grid[index])
    return out


def test_the_aqm_policy_matches_the_control_point_and_decides_deterministically(aqm_decider):
    assert aqm_decider.task == "aqm" and aqm_decider.n_actions == 17
    # the grid as the checkpoint stored it (JSON) against numpy's logspace today: equal to the last bits or so
    np.testing.assert_allclose(aqm_decider.action_values, aqm_action_grid(17), rtol=1e-12, atol=0)
    assert aqm_decider.obs_fields == AQM_FIELDS
    delays = [0.0] * 10 + list(np.linspace(0.0, 0.06, 30)) + [0.06] * 20 + list(np.linspace(0.06, 0.0, 30))
    first = _episode(aqm_decider, delays)
    assert all(0 <= i < 17 for i in first) and len(set(first)) > 1
    assert _episode(aqm_decider, delays) == first
    assert _episode(load_decider(default_checkpoint("aqm"), device="cpu"), delays) == first


def test_the_aqm_policy_raises_p_prime_on_a_standing_queue_and_releases_it_on_an_empty_one(aqm_decider):
    """In closed loop with its own answers (the p' in force is the last one), from p' = 0."""
    empty, standing = _episode(aqm_decider, [0.0] * 15), _episode(aqm_decider, [0.06] * 15)
    assert empty[-1] == 0 and standing[-1] >= 12  # p' of 0.09 or more against a 60 ms classic queue


LLM_DIR = Path(__file__).resolve().parents[2] / "llm"


@pytest.mark.parametrize("path", sorted([*LLM_DIR.glob("checkpoints/*/recipe.yaml"), *LLM_DIR.glob("recipes/*.yaml")]),
                         ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recipe_in_the_tree_is_valid(path):
    """What `testbed learn` would read: a recipe beside each shipped checkpoint, and the comparisons' recipes."""
    recipe = (AqmRecipe if recipe_task(path) == "aqm" else Recipe).load(path)
    assert recipe.name == (path.parent.name if path.name == "recipe.yaml" else path.stem)


def test_expected_decoding_moves_p_prime_by_the_share_of_a_step_the_policy_gives_it(aqm_decider):
    """A teacher whose integrator crosses a grid step every few ticks looks, from the states the model sees,
    like one that steps with some probability each tick: the argmax holds, the expected log p' moves by
    that probability's share of a step."""
    grid = aqm_action_grid(17)
    step = np.log10(grid[2] / grid[1])
    decider = load_decider(default_checkpoint("aqm"), device="cpu")
    decider.decide(_aqm_obs(0.03, float(grid[9])), 0.9)

    def expected(probs: dict[int, float]) -> float:
        logits = torch.full((1, 17), -1e9)
        for index, prob in probs.items():
            logits[0, index] = np.log(prob)
        decider._logits = logits
        return decider.expected_p_prime()

    assert expected({9: 1.0}) == pytest.approx(grid[9])
    assert np.log10(expected({9: 0.8, 10: 0.2})) == pytest.approx(np.log10(grid[9]) + 0.2 * step)
    assert np.log10(expected({9: 0.5, 8: 0.5})) == pytest.approx(np.log10(grid[9]) - 0.5 * step)
    # p' = 0 sits one step below the smallest non-zero value; under half a step above it, p' is off
    assert expected({0: 0.6, 1: 0.4}) == 0.0 and expected({0: 0.4, 1: 0.6}) == pytest.approx(10 ** (-4 - 0.4 * step))

    # acting so, the policy reads the grid index nearest the p' applied as its last action
    decider.config = replace(decider.config, decode="expected")
    policy = LlmPolicy("aqm", decider=decider)
    policy.reset()
    p_prime = float(grid[9])
    for _ in range(10):
        p_prime = policy.act(AqmObservation(**_aqm_obs(0.03, p_prime, utilisation=1.0)))
        nearest = int(np.abs(np.log10(grid[1:]) - np.log10(max(p_prime, 1e-9))).argmin()) + 1
        assert decider.previous_action == (nearest if p_prime > 0 else 0)


def test_expected_decoding_is_for_aqm_policies():
    abr = load_decider(default_checkpoint("abr"), device="cpu")
    with pytest.raises(ValueError, match="for AQM policies"):
        replace(abr.config, decode="expected")
    with pytest.raises(ValueError, match="decode must be one of"):
        replace(abr.config, decode="beam")
