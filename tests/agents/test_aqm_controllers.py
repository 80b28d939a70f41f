"""Classic AQM controllers on hand-worked numbers, and the policy registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents import registry
from agents.aqm import FixedProbability, Pi2Controller, PieController
from agents.policy import Policy
from agents.protocol.control_points import AqmObservation
from agents.registry import make_policy, policy_names, register


def aqm_obs(qdelay_s: float) -> AqmObservation:
    vec = np.zeros(len(AqmObservation.field_names()))
    vec[0] = qdelay_s
    return AqmObservation.from_vector(vec)


# ---------------------------------------------------------------- PI2


def test_pi2_rises_above_target_and_decays_below_it() -> None:
    pi2 = Pi2Controller()  # target 15 ms, alpha 0.16 Hz, beta 3.2 Hz
    # Above target: alpha * 0.010 + beta * (rise of the delay).
    assert pi2.act(aqm_obs(0.025)) == pytest.approx(0.0016 + 0.08, abs=1e-15)  # 0.0816
    assert pi2.act(aqm_obs(0.025)) == pytest.approx(0.0832, abs=1e-15)
    assert pi2.act(aqm_obs(0.035)) == pytest.approx(0.0832 + 0.0032 + 0.032, abs=1e-15)  # 0.1184
    # Below target: the proportional term pulls hard on the fall, then the integral term decays p'.
    assert pi2.act(aqm_obs(0.005)) == pytest.approx(0.1184 - 0.0016 - 0.096, abs=1e-15)  # 0.0208
    assert pi2.act(aqm_obs(0.005)) == pytest.approx(0.0192, abs=1e-15)
    assert pi2.act(aqm_obs(0.005)) == pytest.approx(0.0176, abs=1e-15)
    assert pi2.p_prime == pytest.approx(0.0176, abs=1e-15) and pi2.qdelay_prev_s == 0.005


def test_pi2_clamps_to_zero_and_one() -> None:
    pi2 = Pi2Controller()
    assert pi2.act(aqm_obs(0.0)) == 0.0  # would be -0.0024
    assert pi2.act(aqm_obs(0.5)) == 1.0  # would be 1.6776
    assert pi2.act(aqm_obs(0.5)) == 1.0
    capped = Pi2Controller(coupling_k=2.0, drop_on_overload=False)
    assert capped.act(aqm_obs(0.5)) == 0.5  # 1 / k


def test_pi2_matches_the_queue_arithmetic_bit_for_bit() -> None:
    """Same float64 operations in the same order as the C++ DualPI2, so parity runs agree exactly."""
    rng = np.random.default_rng(3)
    qdelays = rng.uniform(0.0, 0.06, 500)
    target, alpha, beta, k = 0.02, 0.15, 3.0, 2.0
    pi2 = Pi2Controller(target_s=target, alpha_hz=alpha, beta_hz=beta, coupling_k=k, drop_on_overload=False)
    p_prime, prev = 0.0, 0.0
    for q in qdelays:
        q = float(q)
        delta = alpha * (q - target) + beta * (q - prev)
        p = p_prime + delta
        p = min(max(p, 0.0), 1.0)
        p = min(p, 1.0 / k)
        prev, p_prime = q, p
        assert pi2.act(aqm_obs(q)) == p_prime


def test_pi2_reset_forgets_its_state() -> None:
    pi2 = Pi2Controller()
    first = [pi2.act(aqm_obs(q)) for q in (0.02, 0.03, 0.01)]
    pi2.reset()
    assert (pi2.p_prime, pi2.qdelay_prev_s) == (0.0, 0.0)
    assert [pi2.act(aqm_obs(q)) for q in (0.02, 0.03, 0.01)] == first


# ---------------------------------------------------------------- PIE


def test_pie_auto_tunes_small_probabilities_and_answers_sqrt() -> None:
    pie = PieController()  # target 15 ms, alpha 0.125 Hz, beta 1.25 Hz
    p1 = (0.125 * 0.015 + 1.25 * 0.030) / 2048  # p < 1e-6: gains divided by 2048
    assert pie.act(aqm_obs(0.030)) == pytest.approx(math.sqrt(p1), rel=1e-12)
    p2 = p1 + 0.125 * 0.015 / 128  # 1e-5 <= p < 1e-4: divided by 128
    p_prime = pie.act(aqm_obs(0.030))
    assert pie.drop_prob == pytest.approx(p2, rel=1e-12)
    assert p_prime**2 == pytest.approx(p2, rel=1e-12)  # DualPI2 applies p'^2 to classic traffic: PIE's p


def test_pie_decays_when_the_queue_is_short() -> None:
    pie = PieController()
    pie.drop_prob, pie.qdelay_old_s = 0.05, 0.005
    pie.act(aqm_obs(0.005))
    # p = alpha * (-0.010) / 2 (0.01 <= p < 0.1), then * 0.98 since both samples are under target / 2.
    assert pie.drop_prob == pytest.approx((0.05 - 0.00125 / 2) * 0.98, rel=1e-12)


def test_pie_caps_large_increases_and_clamps() -> None:
    pie = PieController()
    pie.drop_prob = 0.5
    pie.act(aqm_obs(0.1))  # raw increase 0.135625, capped at 2 %
    assert pie.drop_prob == pytest.approx(0.52, rel=1e-12)
    pie.drop_prob = 0.99
    assert pie.act(aqm_obs(0.2)) == 1.0
    pie.reset()
    assert pie.act(aqm_obs(0.0)) == 0.0


# ---------------------------------------------------------------- fixed and registry


def test_fixed_probability() -> None:
    fixed = FixedProbability(0.2)
    assert fixed.act(aqm_obs(0.3)) == 0.2
    with pytest.raises(ValueError, match="p_prime must be in"):
        FixedProbability(1.5)


def test_registry_builds_policies_by_name() -> None:
    assert set(policy_names("aqm")) >= {"fixed", "pi2", "pie"}  # others (the LLM agent) may register more
    assert policy_names("aqm") == sorted(policy_names("aqm"))
    assert set(policy_names("abr")) >= {"bba", "bola", "mpc", "rate"}
    fixed = make_policy("aqm", "fixed", p_prime=0.3)
    assert isinstance(fixed, Policy) and fixed.act(aqm_obs(0.0)) == 0.3
    assert make_policy("aqm", "pi2", target_s=0.02).target_s == 0.02
    for name in ("bba", "bola", "mpc", "rate"):
        policy = make_policy("abr", name)
        assert isinstance(policy, Policy) and policy.control == "abr"


def test_registry_errors_name_what_is_known() -> None:
    with pytest.raises(ValueError, match="unknown aqm policy 'pid'; known: ") as excinfo:
        make_policy("aqm", "pid")
    assert str(excinfo.value).endswith(", ".join(policy_names("aqm")))
    with pytest.raises(ValueError, match="control must be one of aqm, abr"):
        make_policy("tcp", "pi2")
    with pytest.raises(ValueError, match="cannot build aqm policy 'fixed'"):
        make_policy("aqm", "fixed", p_priem=0.1)


def test_register_adds_a_policy_and_refuses_silent_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._FACTORIES, "aqm", dict(registry._FACTORIES["aqm"]))  # undone after the test
    register("aqm", "half", lambda: FixedProbability(0.5))
    assert "half" in policy_names("aqm")
    assert make_policy("aqm", "half").act(aqm_obs(0.0)) == 0.5
    with pytest.raises(ValueError, match="already registered"):
        register("aqm", "half", lambda: FixedProbability(0.1))
    register("aqm", "half", lambda: FixedProbability(0.1), replace=True)
    assert make_policy("aqm", "half").act(aqm_obs(0.0)) == 0.1
