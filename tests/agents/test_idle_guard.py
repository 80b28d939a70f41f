"""The idle guard lowers a learned p' only while the queue is empty and the link under-used, a grid step a tick."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agents.aqm.guard import IdleGuard
from agents.llm_agent import LlmPolicy
from agents.protocol.control_points import AqmObservation, aqm_action_grid
from llm.inference import load_decider
from llm.shipped import default_checkpoint

GRID = aqm_action_grid(17)


def _obs(qdelay_s: float, utilisation: float, p_prime: float, rate_bps: float = 150e6) -> AqmObservation:
    c_bytes = qdelay_s * rate_bps / 8
    return AqmObservation(qdelay_s=qdelay_s, c_sojourn_s=qdelay_s, l_sojourn_s=0.0, c_len_pkts=c_bytes / 1500,
                          l_len_pkts=0.0, c_len_bytes=c_bytes, l_len_bytes=0.0, c_arrival_bps=0.3 * rate_bps,
                          l_arrival_bps=0.3 * rate_bps, departure_bps=utilisation * rate_bps,
                          utilisation=utilisation, c_drops=0.0, c_marks=2.0, l_marks=6.0, l_drops=0.0,
                          tail_drops=0.0, p_prime=p_prime, interval_s=0.016)


def test_a_busy_link_or_a_standing_queue_keeps_the_learned_p_prime():
    guard = IdleGuard(GRID, utilisation=0.9)
    assert guard.limit(_obs(0.0, 0.97, GRID[11]), GRID[12]) == GRID[12]  # full link, empty queue
    assert guard.limit(_obs(0.004, 0.3, GRID[11]), GRID[12]) == GRID[12]  # a queue to protect
    assert guard.lowered == 0


def test_on_an_idle_link_p_prime_falls_one_grid_step_below_the_one_in_force_and_is_never_raised():
    guard = IdleGuard(GRID, utilisation=0.9)
    assert guard.limit(_obs(0.0, 0.1, GRID[12]), GRID[12]) == GRID[11]  # the policy would hold: one step down
    assert guard.limit(_obs(0.0, 0.1, GRID[12]), GRID[14]) == GRID[11]  # or raise: still one step down
    assert guard.limit(_obs(0.0, 0.1, GRID[12]), GRID[3]) == GRID[3]  # a lower answer stands
    assert guard.limit(_obs(0.0, 0.1, GRID[1]), GRID[1]) == 0.0  # below the smallest non-zero value: off
    assert guard.limit(_obs(0.0, 0.1, 0.0), GRID[2]) == 0.0
    assert guard.lowered == 4
    # from p' = 0.09, an idle link is unmarked within a dozen ticks (0.2 s at DualPI2's 16 ms)
    p_prime, ticks = GRID[12], 0
    while p_prime > 0:
        p_prime, ticks = guard.limit(_obs(0.0, 0.1, p_prime), p_prime), ticks + 1
    assert ticks == 12


@pytest.mark.parametrize("kwargs", [{"utilisation": 0.0}, {"utilisation": 1.5}, {"empty_s": 0.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        IdleGuard(GRID, **kwargs)


def _episode(policy: LlmPolicy, check=None) -> list[float]:
    """20 ticks of a 60 ms standing queue on a full link, then 40 of an empty queue on a link used at 10 %:
    the p' applied each tick, the p' in force being the last one applied."""
    policy.reset()
    p_prime, applied = 0.0, []
    for tick in range(60):
        qdelay_s, utilisation = (0.06, 1.0) if tick < 20 else (0.0, 0.1)
        p_prime = policy.act(_obs(qdelay_s, utilisation, p_prime))
        applied.append(p_prime)
        if check is not None:
            check(policy, p_prime)
    return applied


def _argmax_policy(idle_guard: float | str) -> LlmPolicy:
    """The shipped AQM weights decoded by argmax (the shipped config applies the expected p' instead)."""
    decider = load_decider(default_checkpoint("aqm"), device="cpu")
    decider.config = replace(decider.config, decode="argmax")
    return LlmPolicy("aqm", decider=decider, idle_guard=idle_guard)


def test_behind_the_guard_an_argmax_policy_unmarks_an_idle_link_and_reads_the_p_prime_applied():
    """Bare, the shipped weights decoded by argmax hold the p' they reached on the standing queue after the
    link has gone idle (as they did in closed loop on a long-RTT mix after slow start); behind the guard p'
    falls to 0, and the next step's action token is the grid index of the p' applied, as in training."""
    bare = _episode(_argmax_policy("none"))
    assert min(bare[20:]) >= GRID[10]

    def token_is_applied(policy, p_prime):
        assert policy.decider.previous_action == int(np.searchsorted(GRID, p_prime))

    guarded = _argmax_policy(0.9)
    applied = _episode(guarded, token_is_applied)
    assert applied[:20] == bare[:20]  # a standing queue: the guard stays out of the way
    assert guarded.guard.lowered > 0 and applied[-1] == 0.0
    with pytest.raises(ValueError, match="idle_guard is for AQM"):
        LlmPolicy("abr", device="cpu", idle_guard=0.9)
