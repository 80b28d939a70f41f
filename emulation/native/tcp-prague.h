/*
 * TCP Prague, the scalable congestion control of the L4S architecture
 * (RFC 9330/9331), modelled on the Linux reference (tcp_prague.c of the L4S
 * team's kernel tree) in its default "rate" RTT-scaling mode.
 *
 * What it adds to DCTCP, per RFC 9331 Appendix A:
 *  - a scalable response to ECN: alpha, an EWMA of the fraction of CE-marked
 *    bytes, and a reduction of cwnd by alpha/2 at most once per round trip;
 *    every packet carries ECT(1), the L4S identifier;
 *  - RTT independence: below TargetRtt the additive increase is scaled by
 *    (srtt/TargetRtt)^2 and alpha and the reductions run once per TargetRtt,
 *    so every flow behaves as if its RTT were max(RTT, TargetRtt);
 *  - pacing at cwnd/srtt times a ratio (200 % in slow start, 100 % after),
 *    from the initial window on;
 *  - a fractional window that moves by one segment per ACK towards its
 *    target, and grows on every unmarked ACK (also in CWR);
 *  - slow start paced at 200 % from the initial window, ended by the first CE
 *    mark with a halving, after which alpha starts from 0: one classic exit
 *    from slow start, then scalable responses (Linux's default alpha mode), so
 *    a long-RTT flow does not collapse under repeated alpha ~ 1 cuts;
 *  - classic fallback: a Reno halving on loss, and detection of a classic ECN
 *    bottleneck (a standing queue of several ms) that switches the ECN
 *    response to a classic one.
 *
 * Feedback: ns-3.44 has no accurate ECN (AccECN). Both ends run this class in
 * ns-3's DctcpEcn mode: the receiver echoes CE with the DCTCP rule of
 * RFC 8257 sec. 3.2 (ECE on every ACK that covers CE-marked data, an
 * immediate ACK when the CE state of arriving data changes), from which the
 * sender counts marked bytes per ACK: exact while no ACK is lost, where
 * AccECN's counters would also survive ACK loss. ns-3 enters CWR (and calls
 * GetSsThresh) at most once per round trip.
 */
#ifndef TCP_PRAGUE_H
#define TCP_PRAGUE_H

#include "ns3/nstime.h"
#include "ns3/sequence-number.h"
#include "ns3/tcp-congestion-ops.h"
#include "ns3/traced-callback.h"
#include "ns3/traced-value.h"

namespace ns3
{

/**
 * @ingroup tcp
 * TCP Prague (L4S scalable congestion control), sender and receiver side.
 */
class TcpPrague : public TcpCongestionOps
{
  public:
    /** What triggered a window reduction (the CwndReduction trace). */
    enum Reduction_t
    {
        ECN_REDUCTION,    //!< ECE: cwnd * (1 - alpha/2)
        LOSS_REDUCTION,   //!< fast retransmit: cwnd / 2
        TIMEOUT_REDUCTION //!< retransmission timeout: cwnd / 2, then a restart from 1 segment
    };

    /** Handling of a classic (RFC 3168) ECN bottleneck. */
    enum ClassicEcn_t
    {
        CLASSIC_ECN_OFF,     //!< no detection
        CLASSIC_ECN_DETECT,  //!< detect and trace only
        CLASSIC_ECN_FALLBACK //!< detect and respond to ECN classically
    };

    static TypeId GetTypeId();
    TcpPrague();
    TcpPrague(const TcpPrague& sock);
    ~TcpPrague() override;

    std::string GetName() const override;
    void Init(Ptr<TcpSocketState> tcb) override;
    uint32_t GetSsThresh(Ptr<const TcpSocketState> tcb, uint32_t bytesInFlight) override;
    void IncreaseWindow(Ptr<TcpSocketState> tcb, uint32_t segmentsAcked) override;
    void CongestionStateSet(Ptr<TcpSocketState> tcb,
                            const TcpSocketState::TcpCongState_t newState) override;
    void CwndEvent(Ptr<TcpSocketState> tcb, const TcpSocketState::TcpCAEvent_t event) override;
    bool HasCongControl() const override;
    void CongControl(Ptr<TcpSocketState> tcb,
                     const TcpRateOps::TcpRateConnection& rc,
                     const TcpRateOps::TcpRateSample& rs) override;
    Ptr<TcpCongestionOps> Fork() override;

    /** Congestion estimate alpha in [0, 1]. */
    double GetAlpha() const;
    /** The fractional congestion window, in segments. */
    double GetFracCwnd() const;
    /** Additive increase per round trip, in segments (1 at or above TargetRtt). */
    double GetIncreasePerRtt() const;
    /** Classic ECN detection: 0 = L4S bottleneck, 1 = classic, in between = transition. */
    double GetClassicEcn() const;
    /** Bytes acknowledged since the connection started. */
    uint64_t GetAckedBytes() const;
    /** Of which acknowledged with ECE (CE-marked), as the sender counts them. */
    uint64_t GetMarkedBytes() const;
    /** Whether the RTT-independent mode is active (after slow start and the transition rounds). */
    bool IsRttIndependent(Ptr<const TcpSocketState> tcb) const;

    /**
     * TracedCallback signature of a window reduction.
     * @param [in] reason what triggered it
     * @param [in] cwndBefore fractional cwnd before, in segments
     * @param [in] cwndAfter fractional cwnd after (the target the window now moves to), in segments
     * @param [in] alpha the alpha used (after any classic-ECN floor)
     */
    typedef void (*CwndReductionTracedCallback)(Reduction_t reason,
                                                double cwndBefore,
                                                double cwndAfter,
                                                double alpha);

  private:
    /** Per-connection sender state, set on the first ACK or congestion signal. */
    void Start(Ptr<const TcpSocketState> tcb);
    /** Count this ACK's bytes, grow or shrink cwnd by one step (Linux prague_update_cwnd). */
    void UpdateCwnd(Ptr<TcpSocketState> tcb, uint32_t unmarkedBytes, bool appLimited);
    /** End of an observation round: alpha EWMA and classic-ECN score (prague_update_alpha). */
    void UpdateAlpha(Ptr<TcpSocketState> tcb);
    /** Start the next observation round at SND.NXT (prague_new_round). */
    void NewRound(Ptr<const TcpSocketState> tcb);
    /** Recompute the per-round additive increase for the current srtt (prague_ai_ack_increase). */
    void UpdateIncrease(Ptr<const TcpSocketState> tcb);
    /** The scalable ECN response (prague_enter_cwr); returns the new ssthresh in bytes. */
    uint32_t ReduceOnEcn(Ptr<const TcpSocketState> tcb);
    /** The Reno loss response (prague_enter_loss). */
    void EnterLoss(Reduction_t reason);
    /** Pacing rate = cwnd / srtt x ratio. */
    void UpdatePacingRate(Ptr<TcpSocketState> tcb) const;
    /** Smallest RTT samples (ever and this round), for classic-ECN detection. */
    void UpdateRttStats(Ptr<const TcpSocketState> tcb);
    /** One round of the classic-ECN score (prague_classic_ecn_detection). */
    void UpdateClassicEcn(Ptr<const TcpSocketState> tcb);
    /** Receiver: the CE state of arriving data (RFC 8257 sec. 3.2 ACK rule). */
    void SetCeState(Ptr<TcpSocketState> tcb, bool ce);

    // Configuration (attributes)
    bool m_useEct0;              //!< mark ECT(0) instead of ECT(1)
    double m_g;                  //!< EWMA gain of alpha
    double m_alphaOnInit;        //!< alpha before the first CE mark
    bool m_halveAtFirstMark;     //!< halve cwnd at the first CE mark
    Time m_targetRtt;            //!< RTT independence target; zero turns it off
    uint32_t m_transitionRounds; //!< rounds after slow start before RTT independence
    uint16_t m_pacingSsRatio;    //!< pacing ratio in slow start, percent
    uint16_t m_pacingCaRatio;    //!< pacing ratio after slow start, percent
    bool m_paceInitialWindow;    //!< pace the initial window
    ClassicEcn_t m_classicMode;  //!< classic ECN detection / fallback
    double m_classicAlpha;       //!< alpha floor under full classic fallback

    // Sender state
    bool m_started{false};
    TracedValue<double> m_alpha;     //!< congestion estimate
    double m_fracCwnd{0};            //!< fractional cwnd, segments
    double m_increasePerRtt{1};      //!< additive increase per round, segments
    bool m_sawCe{false};             //!< a CE mark proved an AQM on the path
    bool m_inLoss{false};            //!< in a loss reduction (no growth until CA_OPEN)
    bool m_lossSsThreshPending{false}; //!< GetSsThresh follows a fast-retransmit EnterLoss
    SequenceNumber32 m_nextSeq;      //!< the current round ends when this is acked
    uint32_t m_round{0};             //!< rounds since slow start ended
    uint64_t m_ackedBytes{0};        //!< bytes acked this round
    uint64_t m_markedBytes{0};       //!< of which ECE-marked
    uint64_t m_totalAckedBytes{0};   //!< bytes acked since the start
    uint64_t m_totalMarkedBytes{0};  //!< of which ECE-marked
    Time m_alphaStamp;               //!< last alpha update
    Time m_cwrStamp;                 //!< last ECN reduction
    bool m_reducedOnce{false};       //!< m_cwrStamp is valid

    // Classic ECN detection
    double m_rttMinS{0};             //!< smallest RTT sample ever, s
    double m_roundRttMinS{0};        //!< smallest RTT sample this round, s (0: none yet)
    double m_classicScore{0};        //!< hysteresis score (Linux classic_ecn, alpha units)
    TracedValue<double> m_classicEcn; //!< 0 = L4S, 1 = classic

    // Receiver state (DCTCP ACK rule)
    bool m_ceState{false};            //!< CE state of the last data segment
    bool m_delayedAckReserved{false}; //!< an ACK is being delayed

    TracedCallback<uint32_t, uint32_t, double> m_estimateTrace;
    TracedCallback<Reduction_t, double, double, double> m_reductionTrace;
};

} // namespace ns3

#endif // TCP_PRAGUE_H
