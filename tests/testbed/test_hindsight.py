"""The whole-session teacher: its values are what the simulator then pays, and no policy does better."""

import json

from agents.abr import BBA, ClairvoyantMPC, RobustMPC
from emulation.video import default_manifest, default_traces, synthetic_trace
from testbed.chunksim import TEACHERS, evaluate, run_session
from testbed.hindsight import HindsightDP


def test_its_value_is_the_qoe_the_session_then_collects():
    manifest = default_manifest()
    for trace in (default_traces()[0], synthetic_trace(5, duration_s=120, min_mbps=0.3, max_mbps=5.0)):
        result = run_session(HindsightDP(), trace, manifest, shadows=[HindsightDP()])
        rows = result.decisions[(result.decisions["role"] == "acting") & ~result.decisions["done"]]
        first = json.loads(rows.iloc[0]["info"])["action_scores"]
        collected = result.video["qoe_lin"].iloc[1:].sum()  # every chunk the policy chose
        # the best first action's value is the QoE to the end, within the grid's interpolation error
        assert abs(max(first) - collected) <= 0.02 * abs(collected) + 0.2, (max(first), collected)


def test_no_policy_beats_it_and_it_beats_the_five_chunk_planner():
    manifest = default_manifest()
    traces = default_traces()[:2] + [synthetic_trace(s, duration_s=90, min_mbps=0.2, max_mbps=4.0) for s in (1, 2)]
    table = evaluate({"hindsight": TEACHERS["hindsight"], "oracle": ClairvoyantMPC, "mpc": RobustMPC, "bba": BBA},
                     traces, manifest)
    qoe = table.pivot(index="trace", columns="policy", values="qoe_lin")
    for other in ("oracle", "mpc", "bba"):
        assert (qoe["hindsight"] >= qoe[other] - 0.01).all(), qoe
    assert qoe["hindsight"].mean() > qoe["oracle"].mean(), qoe


def test_it_needs_the_session():
    obs = default_manifest().abr_observation(1, 1, 4.0, 0.0, [1e6], [1.0])
    try:
        HindsightDP().act(obs)
    except RuntimeError as exc:
        assert "see_playback" in str(exc)
    else:
        raise AssertionError("the teacher acted without seeing the session")


def test_grid_steps_must_be_positive():
    for steps in ((0.0, 2.0), (0.5, -1.0)):
        try:
            HindsightDP(*steps)
        except ValueError:
            continue
        raise AssertionError(f"grid steps {steps} accepted")
