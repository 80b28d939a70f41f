"""TcpPrague in ns-3's expected-value style: the congestion control driven
with controlled ACKs in simulated time (as TcpSocketBase drives it) and its
state asserted, then two short real simulations for what only a network
shows (ECT(1) on the wire, exact CE feedback, the classic-ECN fallback)."""

from __future__ import annotations

import math

import pytest

from emulation.pcap_ecn import count_ecn
from emulation.simulation import run_simulation
from testbed.scenario import load_scenario

SEG = 1000  # segment size of the driven connections, bytes


class AckClock:
    """One Prague sender fed ACKs the way ns-3's TcpSocketBase feeds them.

    Per ACK, in ns-3's order: leave CWR once the recovery point is acked;
    on ECE outside CWR enter CWR, setting ssthresh from GetSsThresh; then
    CongControl. A window of cwnd bytes (or a fixed ``flight_segs``) is
    always in flight, so a round lasts one window of ACKs.
    """

    def __init__(self, ns, rtt_s: float, cwnd_segs: int, ssthresh_segs: int | None = None,
                 flight_segs: int | None = None, **attributes):
        self.ns = ns
        self.cc = ns.CreateObject[ns.TcpPrague]()
        for name, value in attributes.items():
            self.cc.SetAttribute(name, value)
        self.tcb_ptr = ns.CreateObject[ns.TcpSocketState]()
        t = self.tcb = self.tcb_ptr.__deref__()
        t.m_segmentSize = SEG
        t.m_cWnd = cwnd_segs * SEG
        t.m_ssThresh = (ssthresh_segs if ssthresh_segs is not None else 1 << 20) * SEG
        self.set_rtt(rtt_s)
        self.cc.Init(self.tcb_ptr)
        t.m_ecnState = ns.TcpSocketState.ECN_IDLE  # ECN negotiated
        self.rc = ns.TcpRateOps.TcpRateConnection()
        self.rs = ns.TcpRateOps.TcpRateSample()
        self.acked = 0
        self.recover = 0
        self.flight_segs = flight_segs
        self._ack(0, marked=False)  # the handshake's ACK opens the first round

    def set_rtt(self, rtt_s: float) -> None:
        self.tcb.m_srtt = self.ns.Seconds(rtt_s)
        self.tcb.m_lastRtt = self.ns.Seconds(rtt_s)

    @property
    def cwnd(self) -> int:
        return self.tcb.m_cWnd.Get() // SEG

    @property
    def ssthresh(self) -> int:
        return self.tcb.m_ssThresh.Get()

    def _ack(self, segs: int, marked: bool) -> None:
        ns, t = self.ns, self.tcb
        self.acked += segs * SEG
        t.m_lastAckedSeq = ns.SequenceNumber32(self.acked)
        t.m_lastAckedSackedBytes = segs * SEG
        if t.m_congState.Get() == ns.TcpSocketState.CA_CWR and self.acked > self.recover:
            t.m_congState = ns.TcpSocketState.CA_OPEN
        if marked:
            t.m_ecnState = ns.TcpSocketState.ECN_ECE_RCVD
            if t.m_congState.Get() != ns.TcpSocketState.CA_CWR:
                t.m_ssThresh = self.cc.GetSsThresh(self.tcb_ptr, t.m_cWnd.Get())
                t.m_congState = ns.TcpSocketState.CA_CWR
                self.recover = self.acked + t.m_cWnd.Get()
        else:
            t.m_ecnState = ns.TcpSocketState.ECN_IDLE
        flight = self.flight_segs * SEG if self.flight_segs else t.m_cWnd.Get()
        t.m_highTxMark = ns.SequenceNumber32(self.acked + flight)
        self.cc.CongControl(self.tcb_ptr, self.rc, self.rs)

    def ack(self, segs: int = 1, marked: bool = False) -> None:
        self._ack(segs, marked)

    def run_for(self, seconds: float, marked=lambda: False) -> None:
        """ACK one segment at a time, cwnd ACKs per RTT, for ``seconds`` of simulated time."""
        ns = self.ns

        def step() -> None:
            self._ack(1, marked())
            self._event = ns.ScheduleFunction(ns.Seconds(self.tcb.m_srtt.Get().GetSeconds() / max(self.cwnd, 1)), step)

        self._step = step  # the C++ event holds only a reference to it
        self._event = ns.ScheduleFunction(ns.Seconds(0), step)
        ns.Simulator.Stop(ns.Seconds(seconds))
        ns.Simulator.Run()
        ns.Simulator.Cancel(self._event)

    def fast_retransmit(self) -> None:
        ns, t = self.ns, self.tcb
        self.cc.CongestionStateSet(self.tcb_ptr, ns.TcpSocketState.CA_RECOVERY)
        t.m_congState = ns.TcpSocketState.CA_RECOVERY
        t.m_ssThresh = self.cc.GetSsThresh(self.tcb_ptr, t.m_cWnd.Get())
        self.recover = self.acked + t.m_cWnd.Get()

    def end_recovery(self) -> None:
        ns, t = self.ns, self.tcb
        self.cc.CongestionStateSet(self.tcb_ptr, ns.TcpSocketState.CA_OPEN)
        t.m_congState = ns.TcpSocketState.CA_OPEN
        t.m_cWnd = t.m_ssThresh.Get()

    def timeout(self) -> None:
        ns, t = self.ns, self.tcb
        t.m_ssThresh = self.cc.GetSsThresh(self.tcb_ptr, t.m_cWnd.Get())
        self.cc.CwndEvent(self.tcb_ptr, ns.TcpSocketState.CA_EVENT_LOSS)
        self.cc.CongestionStateSet(self.tcb_ptr, ns.TcpSocketState.CA_LOSS)
        t.m_congState = ns.TcpSocketState.CA_LOSS
        t.m_cWnd = SEG


def test_prague_sets_up_ect1_dctcp_feedback_and_pacing(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.01, 10, PacingCaRatio=ns.UintegerValue(110))
    t = clock.tcb
    assert t.m_ecnMode == ns.TcpSocketState.DctcpEcn
    assert t.m_ectCodePoint == ns.TcpSocketState.Ect1
    assert t.m_pacing
    assert (t.m_pacingSsRatio, t.m_pacingCaRatio) == (200, 110)
    assert ns.TypeId.LookupByName("ns3::TcpPrague").GetName() == "ns3::TcpPrague"


def test_alpha_is_the_ewma_of_the_marked_fraction_per_round(fresh_sim):
    ns = fresh_sim
    window, g = 10, 1 / 16
    # Without RTT independence alpha is updated once per round.
    clock = AckClock(ns, 0.05, window, ssthresh_segs=window, flight_segs=window,
                     TargetRtt=ns.TimeValue(ns.Seconds(0)), AlphaOnInit=ns.DoubleValue(1.0))
    fractions = [0.0, 0.5, 0.0, 0.2, 1.0, 0.0, 0.3]
    alpha, seen_ce, expected = 1.0, False, []
    for fraction in fractions:
        marks = round(fraction * window)
        for i in range(window):
            clock.ack(marked=i < marks)
        seen_ce = seen_ce or marks > 0
        if seen_ce:  # before the first mark there is no evidence of an AQM: alpha stays
            alpha = (1 - g) * alpha + g * fraction
        expected.append(alpha)
        assert clock.cc.GetAlpha() == pytest.approx(alpha, abs=1e-12), expected
    assert clock.cc.GetMarkedBytes() == round(sum(fractions) * window) * SEG
    assert clock.cc.GetAckedBytes() == len(fractions) * window * SEG


def test_below_the_target_rtt_alpha_is_updated_once_per_target_rtt(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.005, 20, ssthresh_segs=20)
    clock.run_for(0.1)  # 20 rounds: past the transition to RTT independence
    clock.run_for(0.1, marked=lambda: True)  # every segment marked: alpha = 1 - (1 - g)^updates
    updates = math.log(1 - clock.cc.GetAlpha()) / math.log(1 - 1 / 16)
    # 20 rounds of 5 ms, but one update per 25 ms target RTT (the round in progress then ends).
    assert 3 <= round(updates) <= 4


def test_the_first_mark_halves_cwnd_then_alpha_from_zero_answers(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.05, 100)  # slow start
    assert clock.cc.GetAlpha() == 0.0
    clock.ack(marked=True)
    assert clock.cc.GetFracCwnd() == pytest.approx(50)  # a classic exit from slow start
    assert clock.cwnd == 99 and clock.ssthresh == 99 * SEG  # no more slow start
    for _ in range(200):  # leave CWR; alpha has only learnt that 1 segment in ~100 was marked
        clock.ack()
    alpha = clock.cc.GetAlpha()
    assert 0 < alpha < 0.001
    before = clock.cc.GetFracCwnd()
    clock.ack(marked=True)
    assert clock.cc.GetFracCwnd() == pytest.approx(before * (1 - alpha / 2))


def test_a_mark_cuts_cwnd_by_alpha_over_two_one_segment_per_ack(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.05, 100, ssthresh_segs=50, AlphaOnInit=ns.DoubleValue(0.4),
                     HalveAtFirstMark=ns.BooleanValue(False))
    clock.ack(marked=True)
    target = 100 * (1 - 0.4 / 2)
    assert clock.cc.GetFracCwnd() == pytest.approx(target)
    assert clock.ssthresh == 99 * SEG  # set at once to 80 segments, then following cwnd down
    # cwnd steps down one segment per ACK (the marked one included) towards the target,
    # while the additive increase goes on (1/cwnd segment per unmarked segment), so it
    # settles at 81, the ceiling of the fractional window.
    seen = [clock.cwnd]
    for _ in range(40):
        clock.ack()
        seen.append(clock.cwnd)
    assert seen == list(range(99, 80, -1)) + [81] * 22
    assert clock.cc.GetFracCwnd() == pytest.approx(target + 40 / target, rel=1e-3)


def test_marked_acks_do_not_grow_the_window(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.05, 10, ssthresh_segs=5, HalveAtFirstMark=ns.BooleanValue(False))  # alpha 0: no cut
    clock.ack(2, marked=True)
    clock.ack(2, marked=True)
    assert clock.cc.GetFracCwnd() == pytest.approx(10)
    clock.ack(2)
    assert clock.cc.GetFracCwnd() == pytest.approx(10 + 2 / 10)


def test_rtt_independent_cuts_come_at_most_once_per_target_rtt(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.005, 40, ssthresh_segs=40, AlphaOnInit=ns.DoubleValue(0.5),
                     HalveAtFirstMark=ns.BooleanValue(False))
    clock.run_for(0.2)  # 40 rounds of 5 ms: past the 4 transition rounds
    assert clock.cc.IsRttIndependent(clock.tcb_ptr)

    def cut_at(t_s: float) -> float:
        clock.run_for(t_s - ns.Simulator.Now().GetSeconds())
        before = clock.cc.GetFracCwnd()
        clock.ack(marked=True)
        return clock.cc.GetFracCwnd() / before

    assert cut_at(0.3) == pytest.approx(1 - 0.5 / 2)
    assert cut_at(0.315) == 1.0  # 15 ms later: inside the 25 ms target RTT, no cut
    assert cut_at(0.33) < 0.8  # 30 ms after the first: cut again


def test_loss_halves_cwnd_and_blocks_growth_until_recovery_ends(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.05, 80, ssthresh_segs=40)
    clock.fast_retransmit()
    assert clock.ssthresh == 40 * SEG
    assert clock.cc.GetFracCwnd() == pytest.approx(40)
    for _ in range(60):
        clock.ack()
    assert clock.cwnd == 40
    assert clock.cc.GetFracCwnd() == pytest.approx(40)  # no additive increase in recovery
    clock.end_recovery()
    clock.ack()
    assert clock.cc.GetFracCwnd() == pytest.approx(40 + 1 / 40)


def test_timeout_halves_and_regrows_from_one_segment(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.05, 64, ssthresh_segs=32)
    clock.timeout()
    assert clock.ssthresh == 32 * SEG
    assert clock.cc.GetFracCwnd() == pytest.approx(32)
    assert clock.cwnd == 1
    for _ in range(31):
        clock.ack()
    assert clock.cwnd == 32  # one segment per ACK back to the halved window


def _rate_growth_segs_per_s2(ns, rtt_s: float, target_s: float) -> float:
    """Growth of cwnd/srtt over 2 s of unmarked ACKs, after the transition rounds."""
    rate_segs_per_s = 10_000  # both flows start at the same rate
    cwnd = round(rate_segs_per_s * rtt_s)
    clock = AckClock(ns, rtt_s, cwnd, ssthresh_segs=cwnd, TargetRtt=ns.TimeValue(ns.Seconds(target_s)))
    clock.run_for(6 * rtt_s)  # the first rounds grow at the unscaled rate
    start_rate = clock.cc.GetFracCwnd() / rtt_s
    clock.run_for(2.0)
    return (clock.cc.GetFracCwnd() / rtt_s - start_rate) / 2.0


def test_additive_increase_is_rtt_independent_below_the_target(fresh_sim):
    ns = fresh_sim
    short = _rate_growth_segs_per_s2(ns, 0.005, 0.05)
    long = _rate_growth_segs_per_s2(ns, 0.05, 0.05)
    # Both behave as 50 ms flows: +1 segment per 50 ms round, i.e. 1/0.05^2 = 400 segments/s^2.
    assert long == pytest.approx(400, rel=0.03)
    assert short == pytest.approx(long, rel=0.03)
    # Without RTT independence the 5 ms flow grows 100 times faster per unit time.
    dependent = _rate_growth_segs_per_s2(ns, 0.005, 0.0)
    assert dependent == pytest.approx(100 * long, rel=0.05)


def test_pacing_rate_is_cwnd_over_srtt_times_the_ratio(fresh_sim):
    ns = fresh_sim
    slow_start = AckClock(ns, 0.02, 10)
    slow_start.ack()
    expected = slow_start.tcb.m_cWnd.Get() * 8 / 0.02 * 2.0  # cwnd < ssthresh/2: the 200 % ratio
    assert slow_start.tcb.m_pacingRate.Get().GetBitRate() == pytest.approx(expected, rel=1e-6)
    avoidance = AckClock(ns, 0.02, 50, ssthresh_segs=40, PacingCaRatio=ns.UintegerValue(120))
    avoidance.ack()
    expected = avoidance.tcb.m_cWnd.Get() * 8 / 0.02 * 1.2
    assert avoidance.tcb.m_pacingRate.Get().GetBitRate() == pytest.approx(expected, rel=1e-6)


def test_a_standing_queue_switches_the_ecn_response_to_classic_and_back(fresh_sim):
    ns = fresh_sim
    clock = AckClock(ns, 0.02, 40, ssthresh_segs=40, AlphaOnInit=ns.DoubleValue(0.1))
    clock.ack(marked=True)  # one mark (halving cwnd): evidence of an AQM, so rounds are scored
    clock.run_for(0.3)  # an L4S queue: the RTT stays at its 20 ms minimum
    assert clock.cc.GetClassicEcn() == 0.0
    clock.set_rtt(0.035)
    clock.run_for(0.7)  # a classic AQM's 15 ms standing queue, 20 rounds
    assert clock.cc.GetClassicEcn() == 1.0
    # A mark now takes a cut of at least alpha 0.625 (Cubic's 0.69), whatever alpha says.
    assert clock.cc.GetAlpha() < 0.1
    before = clock.cc.GetFracCwnd()
    clock.ack(marked=True)
    assert clock.cc.GetFracCwnd() == pytest.approx(before * (1 - 0.625 / 2))
    clock.set_rtt(0.02)
    clock.run_for(0.6)  # the queue is gone: back to the scalable response
    assert clock.cc.GetClassicEcn() == 0.0


class _PragueCounters:
    """Reads each Prague sender's own count of acked and ECE-marked bytes at the end of a run."""

    def attach(self, sim) -> None:
        self.counts = {}

    def finish(self, sim) -> None:
        ns = sim.ns
        for i, flow in enumerate(sim.config.all_flows()):
            app = ns.DynamicCast[ns.TcpBulkSender](sim.net.senders[i].GetApplication(0))
            socket = ns.DynamicCast[ns.TcpSocketBase](app.GetSocket())
            ops = ns.PointerValue()
            socket.GetAttribute("CongestionOps", ops)
            prague = ns.DynamicCast[ns.TcpPrague](ops.GetObject())
            if prague:
                self.counts[flow.name] = (prague.GetAckedBytes(), prague.GetMarkedBytes())


def test_every_data_segment_is_ect1_and_every_ce_mark_reaches_the_sender(fresh_sim, tmp_path):
    config = load_scenario("l4s-coexistence", {
        "duration_s": 3, "probes.warmup_s": 1, "bottleneck.capture": True,
        "flows": [{"name": "prague", "kind": "l4s", "rtt_ms": 10},
                  {"name": "cubic", "kind": "classic", "rtt_ms": 10}]})
    assert config.flows[0].cc == "prague"
    counters = _PragueCounters()
    run_simulation(config, tmp_path, [counters])
    table = count_ecn(next(tmp_path.glob("bottleneck-*.pcap")))
    data = table[(table["dport"] == 5000) & (table["src"] == "10.1.0.1")].iloc[0]
    assert data["not_ect"] == 0 and data["ect0"] == 0
    assert data["ect1"] > 5_000 and data["ce"] > 50  # the AQM marked some of them
    acked, marked = counters.counts["prague"]
    # The DCTCP-rule ACKs carry every CE mark back: the sender's count is the wire's
    # (less the few marked segments still unacknowledged when the run stops).
    assert data["ce"] - 3 <= marked / 1448 <= data["ce"]
    assert acked > 0.9 * (data["ect1"] + data["ce"]) * 1448


def _prague_vs_cubic_over_classic_ecn_pie(ns, out_dir, mode: str) -> float:
    ns.RngSeedManager.ResetNextStreamIndex()
    ns.Config.SetDefault("ns3::TcpPrague::ClassicEcn", ns.StringValue(mode))
    try:
        config = load_scenario("l4s-coexistence", {
            "duration_s": 12, "probes.warmup_s": 5,
            "bottleneck.queue": {"type": "pie", "params": {"UseEcn": True, "MaxSize": "1000p"}},
            "flows": [{"name": "prague", "kind": "l4s", "rtt_ms": 20},
                      {"name": "cubic", "kind": "classic", "ecn": True, "rtt_ms": 20}]})
        return run_simulation(config, out_dir)["l_c_ratio"]
    finally:
        ns.Config.SetDefault("ns3::TcpPrague::ClassicEcn", ns.StringValue("Fallback"))


def test_classic_ecn_fallback_shares_a_classic_ecn_aqm_with_cubic(fresh_sim, tmp_path):
    ns = fresh_sim
    fallback = _prague_vs_cubic_over_classic_ecn_pie(ns, tmp_path / "fallback", "Fallback")
    scalable = _prague_vs_cubic_over_classic_ecn_pie(ns, tmp_path / "off", "Off")
    # A scalable response to a classic AQM's sparse marks starves Cubic (~25:1);
    # detecting the standing queue and cutting like Cubic shares the link (Prague's
    # 1-segment additive increase still outgrows Cubic's Reno-friendly one a little).
    assert scalable > 8
    assert 0.4 < fallback < 3.0
    assert scalable > 4 * fallback
