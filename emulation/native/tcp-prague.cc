/*
 * TCP Prague, the L4S scalable congestion control.
 */
#include "tcp-prague.h"

#include "ns3/boolean.h"
#include "ns3/data-rate.h"
#include "ns3/double.h"
#include "ns3/enum.h"
#include "ns3/log.h"
#include "ns3/simulator.h"
#include "ns3/tcp-header.h"
#include "ns3/uinteger.h"

#include <algorithm>
#include <cmath>

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("TcpPrague");
NS_OBJECT_ENSURE_REGISTERED(TcpPrague);

namespace
{
/** Smallest window, segments (Linux MIN_CWND). */
constexpr double MIN_CWND_SEGMENTS = 2.0;
/** Classic-ECN score: hysteresis width on each side of the transition (Linux L_STICKY). */
constexpr double CLASSIC_STICKY = 8.0;
/** Reference standing queue, s (Linux D0, ~2 ms): deeper is classic. */
constexpr double CLASSIC_D0_S = 2e-3;
/** Weight of the log2 term of the score (Linux D = 1/2). */
constexpr double CLASSIC_WEIGHT = 0.5;
} // namespace

TypeId
TcpPrague::GetTypeId()
{
    static TypeId tid =
        TypeId("ns3::TcpPrague")
            .SetParent<TcpCongestionOps>()
            .SetGroupName("Internet")
            .AddConstructor<TcpPrague>()
            .AddAttribute("UseEct0",
                          "Mark ECT(0) instead of the L4S identifier ECT(1) (experiments only).",
                          BooleanValue(false),
                          MakeBooleanAccessor(&TcpPrague::m_useEct0),
                          MakeBooleanChecker())
            .AddAttribute("Gain",
                          "EWMA gain g of alpha, applied once per observation round (dimensionless).",
                          DoubleValue(1.0 / 16),
                          MakeDoubleAccessor(&TcpPrague::m_g),
                          MakeDoubleChecker<double>(0, 1))
            .AddAttribute("AlphaOnInit",
                          "Initial alpha, kept until the first CE mark (dimensionless).",
                          DoubleValue(0.0),
                          MakeDoubleAccessor(&TcpPrague::m_alphaOnInit),
                          MakeDoubleChecker<double>(0, 1))
            .AddAttribute("HalveAtFirstMark",
                          "Halve cwnd at the connection's first CE mark, a classic exit from slow "
                          "start, then respond with alpha from AlphaOnInit (Linux "
                          "prague_alpha_mode 0; false with AlphaOnInit 1 is mode 1).",
                          BooleanValue(true),
                          MakeBooleanAccessor(&TcpPrague::m_halveAtFirstMark),
                          MakeBooleanChecker())
            .AddAttribute("TargetRtt",
                          "RTT independence: below this RTT (s) the flow grows, updates alpha and "
                          "reduces as if its RTT were this; 0 turns RTT independence off.",
                          TimeValue(MilliSeconds(25)),
                          MakeTimeAccessor(&TcpPrague::m_targetRtt),
                          MakeTimeChecker(Seconds(0)))
            .AddAttribute("RttTransitionRounds",
                          "Rounds after slow start before RTT independence starts (rounds).",
                          UintegerValue(4),
                          MakeUintegerAccessor(&TcpPrague::m_transitionRounds),
                          MakeUintegerChecker<uint32_t>())
            .AddAttribute("PacingSsRatio",
                          "Pacing rate in slow start (cwnd < ssthresh/2), percent of cwnd/srtt.",
                          UintegerValue(200),
                          MakeUintegerAccessor(&TcpPrague::m_pacingSsRatio),
                          MakeUintegerChecker<uint16_t>(1))
            .AddAttribute("PacingCaRatio",
                          "Pacing rate after slow start, percent of cwnd/srtt.",
                          UintegerValue(100),
                          MakeUintegerAccessor(&TcpPrague::m_pacingCaRatio),
                          MakeUintegerChecker<uint16_t>(1))
            .AddAttribute("PaceInitialWindow",
                          "Pace the initial window too, at the slow-start ratio of the handshake "
                          "RTT (as the L4S Linux tree's net.ipv4.tcp_pace_iw).",
                          BooleanValue(true),
                          MakeBooleanAccessor(&TcpPrague::m_paceInitialWindow),
                          MakeBooleanChecker())
            .AddAttribute("ClassicEcn",
                          "Classic ECN bottleneck handling: Off, Detect (trace only), or "
                          "Fallback (respond to ECN classically once detected).",
                          EnumValue(TcpPrague::CLASSIC_ECN_FALLBACK),
                          MakeEnumAccessor<ClassicEcn_t>(&TcpPrague::m_classicMode),
                          MakeEnumChecker(TcpPrague::CLASSIC_ECN_OFF,
                                          "Off",
                                          TcpPrague::CLASSIC_ECN_DETECT,
                                          "Detect",
                                          TcpPrague::CLASSIC_ECN_FALLBACK,
                                          "Fallback"))
            .AddAttribute("ClassicEcnAlpha",
                          "alpha floor under full classic fallback (dimensionless; 0.625 gives "
                          "Cubic's 0.69 window reduction, 1 Reno's halving).",
                          DoubleValue(0.625),
                          MakeDoubleAccessor(&TcpPrague::m_classicAlpha),
                          MakeDoubleChecker<double>(0, 1))
            .AddTraceSource("Alpha",
                            "Congestion estimate alpha (dimensionless, 0..1).",
                            MakeTraceSourceAccessor(&TcpPrague::m_alpha),
                            "ns3::TracedValueCallback::Double")
            .AddTraceSource("ClassicEcn",
                            "Classic ECN detection (0 = L4S bottleneck, 1 = classic).",
                            MakeTraceSourceAccessor(&TcpPrague::m_classicEcn),
                            "ns3::TracedValueCallback::Double")
            .AddTraceSource("CongestionEstimate",
                            "End of an observation round: bytes acked, bytes ECE-marked, new alpha.",
                            MakeTraceSourceAccessor(&TcpPrague::m_estimateTrace),
                            "ns3::TcpDctcp::CongestionEstimateTracedCallback")
            .AddTraceSource("CwndReduction",
                            "A window reduction: reason, cwnd before and after (segments), alpha.",
                            MakeTraceSourceAccessor(&TcpPrague::m_reductionTrace),
                            "ns3::TcpPrague::CwndReductionTracedCallback");
    return tid;
}

TcpPrague::TcpPrague()
    : m_useEct0(false),
      m_g(1.0 / 16),
      m_alphaOnInit(0.0),
      m_halveAtFirstMark(true),
      m_targetRtt(MilliSeconds(25)),
      m_transitionRounds(4),
      m_pacingSsRatio(200),
      m_pacingCaRatio(100),
      m_paceInitialWindow(true),
      m_classicMode(CLASSIC_ECN_FALLBACK),
      m_classicAlpha(0.625),
      m_alpha(0.0),
      m_classicEcn(0.0)
{
    NS_LOG_FUNCTION(this);
}

// A fork (an accepted connection) keeps the configuration and starts afresh.
TcpPrague::TcpPrague(const TcpPrague& sock)
    : TcpCongestionOps(sock),
      m_useEct0(sock.m_useEct0),
      m_g(sock.m_g),
      m_alphaOnInit(sock.m_alphaOnInit),
      m_halveAtFirstMark(sock.m_halveAtFirstMark),
      m_targetRtt(sock.m_targetRtt),
      m_transitionRounds(sock.m_transitionRounds),
      m_pacingSsRatio(sock.m_pacingSsRatio),
      m_pacingCaRatio(sock.m_pacingCaRatio),
      m_paceInitialWindow(sock.m_paceInitialWindow),
      m_classicMode(sock.m_classicMode),
      m_classicAlpha(sock.m_classicAlpha),
      m_alpha(sock.m_alphaOnInit),
      m_classicEcn(0.0)
{
    NS_LOG_FUNCTION(this);
}

TcpPrague::~TcpPrague() = default;

std::string
TcpPrague::GetName() const
{
    return "TcpPrague";
}

Ptr<TcpCongestionOps>
TcpPrague::Fork()
{
    return CopyObject<TcpPrague>(this);
}

void
TcpPrague::Init(Ptr<TcpSocketState> tcb)
{
    NS_LOG_FUNCTION(this << tcb);
    // ECN always on, in ns-3's DctcpEcn mode: every packet ECT, per-ACK CE echo.
    tcb->m_useEcn = TcpSocketState::On;
    tcb->m_ecnMode = TcpSocketState::DctcpEcn;
    tcb->m_ectCodePoint = m_useEct0 ? TcpSocketState::Ect0 : TcpSocketState::Ect1;
    tcb->m_pacing = true;
    tcb->m_paceInitialWindow = m_paceInitialWindow;
    tcb->m_pacingSsRatio = m_pacingSsRatio;
    tcb->m_pacingCaRatio = m_pacingCaRatio;
}

bool
TcpPrague::HasCongControl() const
{
    return true;
}

void
TcpPrague::IncreaseWindow(Ptr<TcpSocketState> tcb, uint32_t segmentsAcked)
{
    // Growth happens in CongControl on every ACK, whatever the congestion state.
}

double
TcpPrague::GetAlpha() const
{
    return m_alpha;
}

double
TcpPrague::GetFracCwnd() const
{
    return m_fracCwnd;
}

double
TcpPrague::GetIncreasePerRtt() const
{
    return m_increasePerRtt;
}

double
TcpPrague::GetClassicEcn() const
{
    return m_classicEcn;
}

uint64_t
TcpPrague::GetAckedBytes() const
{
    return m_totalAckedBytes;
}

uint64_t
TcpPrague::GetMarkedBytes() const
{
    return m_totalMarkedBytes;
}

bool
TcpPrague::IsRttIndependent(Ptr<const TcpSocketState> tcb) const
{
    return m_targetRtt.IsStrictlyPositive() && tcb->m_ecnState != TcpSocketState::ECN_DISABLED &&
           tcb->m_cWnd >= tcb->m_ssThresh && m_round >= m_transitionRounds;
}

void
TcpPrague::Start(Ptr<const TcpSocketState> tcb)
{
    if (m_started)
    {
        return;
    }
    m_started = true;
    m_alpha = m_alphaOnInit;
    m_fracCwnd = std::max<double>(MIN_CWND_SEGMENTS,
                                  static_cast<double>(tcb->m_cWnd) / tcb->m_segmentSize);
    m_alphaStamp = Simulator::Now();
    m_round = 0;
    NewRound(tcb);
}

void
TcpPrague::CongControl(Ptr<TcpSocketState> tcb,
                       const TcpRateOps::TcpRateConnection& rc,
                       const TcpRateOps::TcpRateSample& rs)
{
    NS_LOG_FUNCTION(this << tcb);
    Start(tcb);
    UpdateRttStats(tcb);
    uint32_t acked = tcb->m_lastAckedSackedBytes;
    // ns-3 sets ECN_ECE_RCVD for an ACK that advances SND.UNA with ECE set,
    // and leaves it when the next one arrives without ECE.
    bool marked = tcb->m_ecnState == TcpSocketState::ECN_ECE_RCVD;
    m_ackedBytes += acked;
    m_totalAckedBytes += acked;
    if (marked)
    {
        m_markedBytes += acked;
        m_totalMarkedBytes += acked;
        if (!m_sawCe && m_halveAtFirstMark)
        {
            // The first mark ends slow start like a classic flow's; alpha,
            // from AlphaOnInit, answers the marks that follow.
            double before = m_fracCwnd;
            m_fracCwnd = std::max(MIN_CWND_SEGMENTS, m_fracCwnd / 2);
            NS_LOG_INFO("first CE mark: cwnd " << before << " -> " << m_fracCwnd << " segments");
            m_reductionTrace(ECN_REDUCTION, before, m_fracCwnd, 1.0);
        }
        m_sawCe = true;
    }
    UpdateCwnd(tcb, marked ? 0 : acked, rc.m_appLimited != 0);
    bool roundOver = tcb->m_lastAckedSeq >= m_nextSeq;
    if (roundOver &&
        (!IsRttIndependent(tcb) || Simulator::Now() - m_alphaStamp >= m_targetRtt))
    {
        UpdateAlpha(tcb);
    }
    UpdatePacingRate(tcb);
}

void
TcpPrague::UpdateCwnd(Ptr<TcpSocketState> tcb, uint32_t unmarkedBytes, bool appLimited)
{
    const uint32_t seg = tcb->m_segmentSize;
    double acked = static_cast<double>(unmarkedBytes) / seg;
    if (acked > 0 && !m_inLoss && !appLimited)
    {
        if (tcb->m_cWnd < tcb->m_ssThresh)
        {
            // Slow start: the window follows cwnd, one segment per segment acked.
            double cwnd = static_cast<double>(tcb->m_cWnd) / seg;
            double room = std::max(0.0, static_cast<double>(tcb->m_ssThresh) / seg - cwnd);
            double grow = std::min(acked, room);
            m_fracCwnd = cwnd + grow;
            acked -= grow;
            tcb->m_cWnd = static_cast<uint32_t>(std::ceil(m_fracCwnd - 1e-9)) * seg;
            UpdateIncrease(tcb);
        }
        // Congestion avoidance: m_increasePerRtt segments per window acked.
        m_fracCwnd += acked * m_increasePerRtt / std::max(m_fracCwnd, 1.0);
    }
    // Move cwnd one segment per ACK towards the fractional window.
    uint32_t target = static_cast<uint32_t>(
                          std::ceil(std::max(m_fracCwnd, MIN_CWND_SEGMENTS) - 1e-9)) *
                      seg;
    if (tcb->m_cWnd > target && tcb->m_cWnd > MIN_CWND_SEGMENTS * seg)
    {
        tcb->m_cWnd = tcb->m_cWnd - seg;
        tcb->m_ssThresh = tcb->m_cWnd;
        UpdateIncrease(tcb);
    }
    else if (tcb->m_cWnd < target)
    {
        tcb->m_cWnd = tcb->m_cWnd + seg;
        UpdateIncrease(tcb);
    }
}

void
TcpPrague::UpdateAlpha(Ptr<TcpSocketState> tcb)
{
    // Before the first mark there is no evidence of an AQM: alpha stays put.
    if (m_sawCe)
    {
        if (m_classicMode != CLASSIC_ECN_OFF)
        {
            UpdateClassicEcn(tcb);
        }
        double marked = m_ackedBytes > 0
                            ? static_cast<double>(m_markedBytes) / static_cast<double>(m_ackedBytes)
                            : 0.0;
        m_alpha = std::clamp((1 - m_g) * m_alpha.Get() + m_g * marked, 0.0, 1.0);
        m_alphaStamp = Simulator::Now();
        m_estimateTrace(static_cast<uint32_t>(m_ackedBytes),
                        static_cast<uint32_t>(m_markedBytes),
                        m_alpha);
        NS_LOG_INFO("round " << m_round << ": marked fraction " << marked << ", alpha " << m_alpha);
    }
    NewRound(tcb);
}

void
TcpPrague::NewRound(Ptr<const TcpSocketState> tcb)
{
    m_nextSeq = tcb->m_highTxMark;
    m_ackedBytes = 0;
    m_markedBytes = 0;
    m_roundRttMinS = 0;
    if (tcb->m_cWnd >= tcb->m_ssThresh)
    {
        ++m_round;
    }
    UpdateIncrease(tcb);
}

void
TcpPrague::UpdateIncrease(Ptr<const TcpSocketState> tcb)
{
    // Linux RTT_CONTROL_RATE: a flow below the target grows by (srtt/target)^2
    // segments per round, i.e. its rate grows by 1/target^2 segments/s^2,
    // as fast as a flow at the target RTT.
    double srtt = tcb->m_srtt.Get().GetSeconds();
    double target = m_targetRtt.GetSeconds();
    if (target <= 0 || srtt <= 0 || srtt >= target || m_round < m_transitionRounds ||
        tcb->m_ecnState == TcpSocketState::ECN_DISABLED)
    {
        m_increasePerRtt = 1.0;
        return;
    }
    m_increasePerRtt = (srtt / target) * (srtt / target);
}

uint32_t
TcpPrague::GetSsThresh(Ptr<const TcpSocketState> tcb, uint32_t bytesInFlight)
{
    NS_LOG_FUNCTION(this << tcb << bytesInFlight);
    Start(tcb);
    const uint32_t seg = tcb->m_segmentSize;
    if (m_lossSsThreshPending)
    {
        // Fast retransmit: CongestionStateSet(CA_RECOVERY) has halved the window.
        m_lossSsThreshPending = false;
        return std::max<uint32_t>(2 * seg, static_cast<uint32_t>(m_fracCwnd * seg));
    }
    if (tcb->m_ecnState == TcpSocketState::ECN_ECE_RCVD)
    {
        // ns-3 enters CWR: the ECN response, unless a loss reduction is under way.
        return m_inLoss ? tcb->m_ssThresh.Get() : ReduceOnEcn(tcb);
    }
    // Retransmission timeout: CwndEvent(CA_EVENT_LOSS) follows and halves the window.
    return std::max<uint32_t>(2 * seg, static_cast<uint32_t>(m_fracCwnd * seg / 2));
}

uint32_t
TcpPrague::ReduceOnEcn(Ptr<const TcpSocketState> tcb)
{
    // RTT independence: at most one reduction per target RTT.
    if (IsRttIndependent(tcb) && m_reducedOnce &&
        Simulator::Now() - m_cwrStamp < m_targetRtt)
    {
        NS_LOG_LOGIC("ECN reduction skipped: last one " << (Simulator::Now() - m_cwrStamp).As(Time::MS)
                                                        << " ago");
        return tcb->m_ssThresh;
    }
    m_cwrStamp = Simulator::Now();
    m_reducedOnce = true;
    double alpha = m_alpha;
    if (m_classicMode == CLASSIC_ECN_FALLBACK)
    {
        alpha = std::max(alpha, m_classicAlpha * m_classicEcn.Get());
    }
    if (alpha > 0)
    {
        double before = m_fracCwnd;
        m_fracCwnd = std::max(MIN_CWND_SEGMENTS, m_fracCwnd * (1 - alpha / 2));
        NS_LOG_INFO("ECN reduction: cwnd " << before << " -> " << m_fracCwnd
                                           << " segments, alpha " << alpha);
        m_reductionTrace(ECN_REDUCTION, before, m_fracCwnd, alpha);
    }
    const uint32_t seg = tcb->m_segmentSize;
    return std::max<uint32_t>(2 * seg, static_cast<uint32_t>(m_fracCwnd * seg));
}

void
TcpPrague::EnterLoss(Reduction_t reason)
{
    double before = m_fracCwnd;
    m_fracCwnd = std::max(MIN_CWND_SEGMENTS, m_fracCwnd / 2);
    m_inLoss = true;
    NS_LOG_INFO("loss reduction: cwnd " << before << " -> " << m_fracCwnd << " segments");
    m_reductionTrace(reason, before, m_fracCwnd, 1.0);
}

void
TcpPrague::CongestionStateSet(Ptr<TcpSocketState> tcb,
                              const TcpSocketState::TcpCongState_t newState)
{
    NS_LOG_FUNCTION(this << tcb << TcpSocketState::TcpCongStateName[newState]);
    switch (newState)
    {
    case TcpSocketState::CA_RECOVERY:
        Start(tcb);
        EnterLoss(LOSS_REDUCTION);
        m_lossSsThreshPending = true;
        break;
    case TcpSocketState::CA_OPEN:
        // Also the connection's start: the handshake gave an RTT sample, so the
        // initial window goes out paced.
        m_inLoss = false;
        UpdatePacingRate(tcb);
        break;
    default:
        break;
    }
}

void
TcpPrague::CwndEvent(Ptr<TcpSocketState> tcb, const TcpSocketState::TcpCAEvent_t event)
{
    NS_LOG_FUNCTION(this << tcb << event);
    switch (event)
    {
    case TcpSocketState::CA_EVENT_ECN_IS_CE:
        SetCeState(tcb, true);
        break;
    case TcpSocketState::CA_EVENT_ECN_NO_CE:
        SetCeState(tcb, false);
        break;
    case TcpSocketState::CA_EVENT_DELAYED_ACK:
        m_delayedAckReserved = true;
        break;
    case TcpSocketState::CA_EVENT_NON_DELAYED_ACK:
        m_delayedAckReserved = false;
        break;
    case TcpSocketState::CA_EVENT_LOSS:
        Start(tcb);
        EnterLoss(TIMEOUT_REDUCTION);
        break;
    default:
        break;
    }
}

void
TcpPrague::SetCeState(Ptr<TcpSocketState> tcb, bool ce)
{
    // RFC 8257 sec. 3.2: when the CE state of arriving data changes while an
    // ACK is being delayed, send that ACK at once with the old state's ECE, so
    // that every ACK's ECE describes all the segments it covers. ns-3 signals
    // the CE state before the segment enters the receive buffer, so an ACK
    // sent now ends exactly at the previous segment. (ns-3's TcpDctcp ACKs up
    // to the sequence saved at the previous event instead, one segment short,
    // which drops or doubles isolated marks.)
    if (ce != m_ceState && m_delayedAckReserved)
    {
        tcb->m_sendEmptyPacketCallback(m_ceState ? (TcpHeader::ACK | TcpHeader::ECE)
                                                 : TcpHeader::ACK);
        m_delayedAckReserved = false;
    }
    m_ceState = ce;
    if (ce)
    {
        tcb->m_ecnState = TcpSocketState::ECN_CE_RCVD;
    }
    else if (tcb->m_ecnState == TcpSocketState::ECN_CE_RCVD ||
             tcb->m_ecnState == TcpSocketState::ECN_SENDING_ECE)
    {
        tcb->m_ecnState = TcpSocketState::ECN_IDLE;
    }
}

void
TcpPrague::UpdatePacingRate(Ptr<TcpSocketState> tcb) const
{
    Time srtt = tcb->m_srtt.Get();
    if (!srtt.IsStrictlyPositive())
    {
        return;
    }
    uint16_t ratio = tcb->m_cWnd < tcb->m_ssThresh / 2 ? tcb->m_pacingSsRatio : tcb->m_pacingCaRatio;
    double bps = static_cast<double>(tcb->m_cWnd) * 8 * ratio / 100 / srtt.GetSeconds();
    DataRate rate(static_cast<uint64_t>(bps));
    tcb->m_pacingRate = std::min(rate, tcb->m_maxPacingRate);
}

void
TcpPrague::UpdateRttStats(Ptr<const TcpSocketState> tcb)
{
    double sample = tcb->m_lastRtt.Get().GetSeconds();
    if (sample <= 0)
    {
        return;
    }
    m_rttMinS = m_rttMinS > 0 ? std::min(m_rttMinS, sample) : sample;
    m_roundRttMinS = m_roundRttMinS > 0 ? std::min(m_roundRttMinS, sample) : sample;
}

void
TcpPrague::UpdateClassicEcn(Ptr<const TcpSocketState> tcb)
{
    if (m_roundRttMinS <= 0)
    {
        return;
    }
    // A classic AQM holds a standing queue of several ms (its target) that
    // does not drain within a round; an L4S AQM keeps the queue under ~1 ms
    // and empties it often. The standing queue is the smallest RTT of the
    // round above the smallest ever seen, less one pacing gap: with RFC 7323
    // timestamps a delayed ACK echoes its first segment, so every sample also
    // holds the gap to the second one. The score drifts by half the log2 of
    // depth / 2 ms per round (at most -1), with CLASSIC_STICKY units of
    // hysteresis on each side of a one-unit transition, as Linux's
    // classic_ecn score.
    double rateBps = static_cast<double>(tcb->m_pacingRate.Get().GetBitRate());
    double gap = rateBps > 0 ? tcb->m_segmentSize * 8.0 / rateBps : 0.0;
    double depth = m_roundRttMinS - m_rttMinS - gap;
    double score = m_classicScore +
                   CLASSIC_WEIGHT * std::log2(std::max(depth, CLASSIC_D0_S / 4) / CLASSIC_D0_S);
    m_classicScore = std::clamp(score, 0.0, 2 * CLASSIC_STICKY + 1);
    NS_LOG_INFO("classic ECN score " << m_classicScore << ": standing queue " << depth * 1e3
                                     << " ms (pacing gap " << gap * 1e3 << " ms)");
    double classic = std::clamp(m_classicScore - CLASSIC_STICKY, 0.0, 1.0);
    if (classic != m_classicEcn)
    {
        m_classicEcn = classic;
    }
}

} // namespace ns3
