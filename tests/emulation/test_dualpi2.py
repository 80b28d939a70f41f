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


# --- paths of the model beyond the defaults: expected values worked out from RFC 9332 / sch_dualpi2 ------------


def stats_by_reason(ns, q) -> dict:
    """ns-3's own per-reason drop and mark counts (QueueDisc::GetStats), keyed by our reason constants."""
    Q, st = ns.DualPi2QueueDisc, q.GetStats()
    return {
        "classic_drop": st.GetNDroppedPackets(Q.UNFORCED_CLASSIC_DROP),
        "classic_mark": st.GetNMarkedPackets(Q.UNFORCED_CLASSIC_MARK),
        "coupled_mark": st.GetNMarkedPackets(Q.UNFORCED_L4S_MARK),
        "step_mark": st.GetNMarkedPackets(Q.STEP_MARK),
        "step_drop": st.GetNDroppedPackets(Q.STEP_DROP),
        "overload_drop": st.GetNDroppedPackets(Q.OVERLOAD_DROP),
        "forced_drop": st.GetNDroppedPackets(Q.FORCED_DROP),
    }


def _aged_l_queue(ns, sojourn_s: float, n: int, **params):
    """A queue holding ``n`` L packets that all entered at the current time, after ``sojourn_s`` of waiting."""
    q = make_queue(ns, ExternalControl=True, QueueLimit=n + 10, **params)
    for _ in range(n):
        assert q.Enqueue(item(ns, ECT1))
    run_until(ns, ns.Simulator.Now().GetSeconds() + sojourn_s)
    return q


@pytest.mark.parametrize(("sojourn_us", "expected"), [(700, 0.0), (1000, 0.5), (1100, 0.75), (1300, 1.0)])
def test_ramp_l_aqm_marks_linearly_between_ramp_min_and_ramp_max(fresh_sim, sojourn_us, expected):
    # RFC 9332 A.2: p_L = (sojourn - RampMin) / RampRange, clamped to [0, 1]; with p' = 0 the coupled term is 0.
    ns, n = fresh_sim, 3000
    q = _aged_l_queue(ns, sojourn_us * 1e-6, n, LAqm="Ramp", RampMin="800us", RampRange="400us")
    for _ in range(n - 2):  # the ramp acts while more than one packet (and 2 MTU) are queued
        assert q.Dequeue()
    marks = counters(q)["stepMarks"]
    assert marks / (n - 2) == pytest.approx(expected, abs=0.03)
    assert stats_by_reason(ns, q)["step_mark"] == marks and counters(q)["coupledMarks"] == 0


def test_ramp_l_aqm_takes_the_coupled_probability_when_it_is_larger(fresh_sim):
    ns, n = fresh_sim, 3000
    q = _aged_l_queue(ns, 900e-6, n, LAqm="Ramp", RampMin="800us", RampRange="400us")  # native 0.25
    assert q.SetBaseProbability(0.3)  # p_CL = k p' = 0.6 > 0.25: the coupled term decides
    for _ in range(n - 2):
        q.Dequeue()
    c = counters(q)
    assert c["coupledMarks"] / (n - 2) == pytest.approx(0.6, abs=0.03) and c["stepMarks"] == 0
    assert stats_by_reason(ns, q)["coupled_mark"] == c["coupledMarks"]


def test_min_qlen_step_spares_a_short_l_queue(fresh_sim):
    # Step AQM marks only while the L queue (the leaving packet included) holds more than MinQlenStep packets.
    ns = fresh_sim
    q = _aged_l_queue(ns, 0.002, 8, MinQlenStep=5)  # 2 ms sojourn: above the 1 ms step for every packet
    while q.Dequeue():
        pass
    assert counters(q)["stepMarks"] == 3  # lengths 8, 7, 6 exceed 5; 5..1 do not
    assert stats_by_reason(ns, q)["step_mark"] == 3


def test_drop_early_applies_the_classic_aqm_at_enqueue(fresh_sim):
    ns, n, p = fresh_sim, 8000, 0.5
    q = make_queue(ns, ExternalControl=True, DropEarly=True)
    assert q.SetBaseProbability(p)
    accepted = sum(bool(q.Enqueue(item(ns, NOT_ECT))) for _ in range(n))
    by_reason = stats_by_reason(ns, q)
    assert by_reason["classic_drop"] == n - accepted == counters(q)["classicDrops"]
    assert (n - accepted) / n == pytest.approx(p * p, abs=0.02)  # p_C = p'^2, rolled as the packet arrives
    assert q.GetStats().nTotalDroppedPacketsBeforeEnqueue == n - accepted
    while q.Dequeue():  # nothing is dropped on the way out
        pass
    assert q.GetStats().nTotalDroppedPacketsAfterDequeue == 0


def test_without_drop_on_overload_l_packets_are_marked_not_dropped(fresh_sim):
    ns, n = fresh_sim, 5000
    q = make_queue(ns, ExternalControl=True, StepThreshold="1s", DropOnOverload=False)
    l4s = _fixed_probability_run(ns, q, ECT1, 0.8, n)  # k p' = 1.6: overload
    assert l4s["lDrops"] == l4s["overloadDrops"] == 0
    assert l4s["coupledMarks"] == n  # p_CL capped at 1: every L packet is marked
    assert stats_by_reason(ns, q)["coupled_mark"] == n


def test_without_drop_on_overload_pi2_keeps_p_prime_at_most_one_over_k(fresh_sim):
    ns = fresh_sim
    q = make_queue(ns, DropOnOverload=False, QueueLimit=100000)
    for _ in range(5000):
        q.Enqueue(item(ns, NOT_ECT))
    run_until(ns, 3.0)  # a standing 3 s classic queue drives PI2 to its ceiling
    assert q.GetBaseProbability() == pytest.approx(0.5)  # 1 / CouplingFactor
    assert q.GetCoupledProbability() == pytest.approx(1.0)


def test_every_drop_and_mark_is_counted_under_its_reason(fresh_sim):
    # Overload (k p' > 1) with drop on overload, both queues, and a small shared limit: each of our counters
    # equals ns-3's own count for the reason it stands for.
    ns = fresh_sim
    q = make_queue(ns, ExternalControl=True, QueueLimit=40, StepThreshold="1s")
    assert q.SetBaseProbability(0.7)
    for i in range(6000):
        q.Enqueue(item(ns, (NOT_ECT, ECT0, ECT1)[i % 3]))
        if i % 2:
            q.Dequeue()
    c, by_reason = counters(q), stats_by_reason(ns, q)
    assert by_reason["forced_drop"] == c["tailDrops"] > 0
    assert by_reason["overload_drop"] == c["overloadDrops"] > 0
    assert by_reason["classic_drop"] + by_reason["overload_drop"] == c["classicDrops"] + c["lDrops"]
    assert by_reason["classic_mark"] == c["classicMarks"] == 0  # in overload ECT(0) is dropped, not marked
    assert by_reason["coupled_mark"] == c["coupledMarks"] == 0
    stats = q.GetStats()
    assert stats.nTotalDroppedPackets == c["tailDrops"] + c["classicDrops"] + c["lDrops"]
