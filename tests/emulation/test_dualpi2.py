"""DualPi2QueueDisc unit behaviour, in the spirit of ns-3's queue-disc suites:
controlled packets pushed through the C++ queue disc, counts and
probabilities asserted."""

from __future__ import annotations

import pytest

from emulation.topology import TopologyError, create_queue_disc

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
PKT = 1000


def make_queue(ns, **params):
    q = create_queue_disc(ns, "dualpi2", {k: v for k, v in params.items()})
    q.Initialize()
    return ns.DynamicCast[ns.DualPi2QueueDisc](q)


def item(ns, ecn: int, size: int = PKT):
    hdr = ns.Ipv4Header()
    hdr.SetEcn(ecn)
    hdr.SetPayloadSize(size)
    return ns.Create[ns.Ipv4QueueDiscItem](ns.Create[ns.Packet](size), ns.Address(), 0x0800, hdr)


def counters(q) -> dict:
    c = q.GetCounters()
    names = ("classicDrops", "classicMarks", "coupledMarks", "stepMarks", "lDrops", "overloadDrops", "tailDrops")
    return {n: int(getattr(c, n)) for n in names}


def run_until(ns, t_s: float) -> None:
    ns.Simulator.Stop(ns.Seconds(t_s) - ns.Simulator.Now())
    ns.Simulator.Run()


def test_classification_by_ecn_codepoint(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns)
    for ecn in (NOT_ECT, ECT0, ECT0):
        assert q.Enqueue(item(ns, ecn))
    for ecn in (ECT1, CE):
        assert q.Enqueue(item(ns, ecn))
    assert q.GetQueueLength(0) == 3  # classic
    assert q.GetQueueLength(1) == 2  # L
    any_ect = make_queue(ns, AnyEct=True)
    any_ect.Enqueue(item(ns, ECT0))
    assert any_ect.GetQueueLength(1) == 1


def _fixed_probability_run(ns, q, ecn: int, p_prime: float, n: int) -> dict:
    """Push packets until ``n`` have met the AQM (delivered + dropped); ratios are per packet."""
    assert q.SetBaseProbability(p_prime)
    seen = 0
    while seen < n:
        while q.GetQueueLength(0) + q.GetQueueLength(1) < 30:  # stay well above the 2-MTU no-AQM floor
            q.Enqueue(item(ns, ecn))
        drops_before = counters(q)["classicDrops"] + counters(q)["lDrops"]
        assert q.Dequeue()
        seen += 1 + counters(q)["classicDrops"] + counters(q)["lDrops"] - drops_before
    return counters(q)


def test_coupled_and_classic_probabilities_follow_k_p_and_p_squared(fresh_sim):
    ns = fresh_sim
    n, p = 20000, 0.2
    classic = _fixed_probability_run(ns, make_queue(ns, ExternalControl=True), ECT0, p, n)
    assert classic["classicMarks"] / n == pytest.approx(p * p, abs=0.01)
    assert classic["classicDrops"] == 0
    dropped = _fixed_probability_run(ns, make_queue(ns, ExternalControl=True), NOT_ECT, p, n)
    assert dropped["classicDrops"] / n == pytest.approx(p * p, abs=0.01)
    assert dropped["classicMarks"] == 0
    l4s = _fixed_probability_run(ns, make_queue(ns, ExternalControl=True, StepThreshold="1s"), ECT1, p, n)
    assert l4s["coupledMarks"] / n == pytest.approx(2 * p, abs=0.02)
    assert l4s["classicDrops"] == l4s["lDrops"] == 0


def test_coupling_factor_attribute_scales_l_marking(fresh_sim):
    ns = fresh_sim
    n = 10000
    l4s = _fixed_probability_run(ns, make_queue(ns, ExternalControl=True, StepThreshold="1s", CouplingFactor=3), ECT1, 0.1, n)
    assert l4s["coupledMarks"] / n == pytest.approx(0.3, abs=0.02)


def test_no_aqm_below_two_mtu_backlog(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns, ExternalControl=True)
    q.SetBaseProbability(0.9)
    for _ in range(2000):
        q.Enqueue(item(ns, ECT0))
        q.Dequeue()
    assert counters(q)["classicMarks"] == 0


def test_overload_switches_l_to_dropping(fresh_sim):
    ns = fresh_sim
    n, p = 10000, 0.8  # k p' = 1.6 > 1
    l4s = _fixed_probability_run(ns, make_queue(ns, ExternalControl=True, StepThreshold="1s"), ECT1, p, n)
    assert l4s["coupledMarks"] == 0
    assert l4s["lDrops"] / n == pytest.approx(p * p, abs=0.02)
    classic = _fixed_probability_run(ns, make_queue(ns, ExternalControl=True), ECT0, p, n)
    assert classic["classicMarks"] == 0, "classic ECT(0) packets are dropped, not marked, in overload"
    assert classic["classicDrops"] / n == pytest.approx(p * p, abs=0.02)


def test_step_marks_above_threshold_only(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns, ExternalControl=True)
    for _ in range(20):
        q.Enqueue(item(ns, ECT1))
    run_until(ns, 0.0005)  # 0.5 ms sojourn: below the 1 ms step
    for _ in range(10):
        assert q.Dequeue()
    assert counters(q)["stepMarks"] == 0
    run_until(ns, 0.002)  # now 2 ms: every remaining packet is marked
    for _ in range(10):
        assert q.Dequeue()
    assert counters(q)["stepMarks"] == 10


def test_pi2_raises_p_above_target_and_decays_below(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns)
    for _ in range(50):
        q.Enqueue(item(ns, NOT_ECT))
    run_until(ns, 0.2)  # head sojourn grows past the 15 ms target: p' must rise
    high = q.GetBaseProbability()
    assert high > 0.01
    assert q.GetClassicProbability() == pytest.approx(high * high)
    assert q.GetCoupledProbability() == pytest.approx(min(2 * high, 1.0))
    while q.Dequeue():
        pass
    run_until(ns, 0.5)  # empty queue, zero delay: p' decays to 0
    assert q.GetBaseProbability() < high
    run_until(ns, 3.0)
    assert q.GetBaseProbability() == 0.0


def test_external_control_freezes_pi2_and_rejects_bad_values(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns, ExternalControl=True)
    ticks = []

    def hook() -> None:  # held here: C++ keeps only a reference to the Python callable
        ticks.append(ns.Simulator.Now().GetSeconds())

    q.SetExternalUpdateHook(hook)
    for _ in range(50):
        q.Enqueue(item(ns, NOT_ECT))
    run_until(ns, 0.1)
    assert q.GetBaseProbability() == 0.0
    assert ticks == pytest.approx([0.016 * i for i in range(1, 7)])
    assert not q.SetBaseProbability(1.5)
    assert not q.SetBaseProbability(-0.1)
    assert q.SetBaseProbability(0.25)
    assert q.GetClassicProbability() == pytest.approx(0.0625)


def test_wrr_protects_classic_from_starvation(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns, ExternalControl=True, QueueLimit=100000)
    for _ in range(3000):
        q.Enqueue(item(ns, ECT1))
        q.Enqueue(item(ns, NOT_ECT))
    from_c = 0
    for _ in range(2000):
        before = q.GetQueueLength(0)
        q.Dequeue()
        from_c += before - q.GetQueueLength(0)
    assert from_c / 2000 == pytest.approx(0.10, abs=0.02)


def test_shared_limit_tail_drops(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns, QueueLimit=10)
    accepted = [q.Enqueue(item(ns, ECT1 if i % 2 else NOT_ECT)) for i in range(15)]
    assert accepted.count(True) == 10
    assert counters(q)["tailDrops"] == 5
    assert q.GetQueueLength(0) + q.GetQueueLength(1) == 10


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"ClassicProtection": 150}, "ClassicProtection=150"),
        ({"Alpha": "fast"}, "Alpha='fast'"),
        ({"LAqm": "Cliff"}, "LAqm='Cliff'"),
        ({"Targett": "15ms"}, "no parameter 'Targett'"),
    ],
)
def test_bad_attribute_values_are_rejected_with_a_clear_error(ns, params, needle):
    with pytest.raises(TopologyError, match=needle.replace("(", r"\(")):
        create_queue_disc(ns, "dualpi2", params)
