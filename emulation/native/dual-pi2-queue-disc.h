/*
 * DualQ Coupled AQM (DualPI2), RFC 9332, following Linux sch_dualpi2.
 *
 * Two FIFO internal queues share one packet limit: ECT(1)/CE packets go to the
 * L (low latency) queue, Not-ECT/ECT(0) to the C (classic) queue. A PI2
 * controller updates the base probability p' every Tupdate from the larger
 * head-of-queue sojourn; classic packets are dropped (Not-ECT) or marked
 * (ECT(0)) with p_C = p'^2, L packets are marked with max(native, k p').
 */
#ifndef DUAL_PI2_QUEUE_DISC_H
#define DUAL_PI2_QUEUE_DISC_H

#include "ns3/event-id.h"
#include "ns3/nstime.h"
#include "ns3/queue-disc.h"
#include "ns3/random-variable-stream.h"
#include "ns3/traced-callback.h"
#include "ns3/traced-value.h"

#include <functional>


namespace ns3
{

/**
 * @ingroup traffic-control
 * DualQ Coupled PI2 queue disc (RFC 9332, Linux sch_dualpi2 defaults).
 */
class DualPi2QueueDisc : public QueueDisc
{
  public:
    /** Native AQM of the L queue. */
    enum LAqmMode
    {
        L_AQM_STEP, //!< CE-mark every L packet whose sojourn exceeds StepThreshold (Linux)
        L_AQM_RAMP, //!< Linear ramp of marking probability over [RampMin, RampMin + RampRange] (RFC)
    };

    /** Index of the internal queues. */
    static constexpr std::size_t CLASSIC = 0;
    static constexpr std::size_t L4S = 1;

    // Drop and mark reasons: one vocabulary for counters and traces.
    static constexpr const char* UNFORCED_CLASSIC_DROP = "Classic drop (p_C)";
    static constexpr const char* UNFORCED_CLASSIC_MARK = "Classic mark (p_C)";
    static constexpr const char* UNFORCED_L4S_MARK = "L4S coupled mark (p_CL)";
    static constexpr const char* STEP_MARK = "L4S native AQM mark";
    static constexpr const char* STEP_DROP = "L4S native AQM drop (not ECN capable)";
    static constexpr const char* OVERLOAD_DROP = "Overload drop";
    static constexpr const char* FORCED_DROP = "Queue limit exceeded";

    /** Cumulative counters, read by probes and control points. */
    struct Counters
    {
        uint64_t cEnqueuedPackets = 0;
        uint64_t lEnqueuedPackets = 0;
        uint64_t cEnqueuedBytes = 0;
        uint64_t lEnqueuedBytes = 0;
        uint64_t cDequeuedBytes = 0;
        uint64_t lDequeuedBytes = 0;
        uint64_t classicDrops = 0;   //!< p_C drops of Not-ECT classic packets
        uint64_t classicMarks = 0;   //!< p_C CE marks of ECT(0) classic packets
        uint64_t coupledMarks = 0;   //!< p_CL CE marks of L packets
        uint64_t stepMarks = 0;      //!< native L AQM CE marks
        uint64_t lDrops = 0;         //!< L drops: overload and native AQM on non-ECN L packets
        uint64_t overloadDrops = 0;  //!< drops because k p' > 1 (both queues)
        uint64_t tailDrops = 0;      //!< shared limit overflow
    };

    static TypeId GetTypeId();
    DualPi2QueueDisc();
    ~DualPi2QueueDisc() override;

    /** Sojourn of the head packet of queue @p queue (zero when empty). */
    Time GetQueueSojourn(std::size_t queue) const;
    /** max(C head sojourn, L head sojourn): the PI2 controller's input. */
    Time GetQueueDelay() const;
    uint32_t GetQueueLength(std::size_t queue) const;
    uint32_t GetQueueBytes(std::size_t queue) const;

    double GetBaseProbability() const;
    double GetCoupledProbability() const;
    double GetClassicProbability() const;
    /**
     * Set p' from outside (an external controller owns the PI2 update when
     * ExternalControl is true). Returns false, leaving p' unchanged, for
     * values outside [0, 1] (a caller error must not abort the simulation).
     */
    bool SetBaseProbability(double pPrime);
    /** Called every Tupdate instead of the PI2 update when ExternalControl is true. */
    void SetExternalUpdateHook(std::function<void()> hook);

    const Counters& GetCounters() const;
    int64_t AssignStreams(int64_t stream);

  protected:
    void DoDispose() override;

  private:

    bool DoEnqueue(Ptr<QueueDiscItem> item) override;
    Ptr<QueueDiscItem> DoDequeue() override;
    bool CheckConfig() override;
    void InitializeParams() override;

    bool IsL4s(Ptr<const QueueDiscItem> item) const;
    /** One PI2 update of p' (or the external hook), then reschedule. */
    void Update();
    /** Take the next packet per the WRR classic protection; sets @p fromL. */
    Ptr<QueueDiscItem> DequeuePacket(bool& fromL);
    /** Coupled/classic AQM decision at dequeue; true if the packet must be dropped. */
    bool MustDrop(Ptr<QueueDiscItem> item, bool fromL);
    /** Native L AQM at dequeue; true if the (non-ECN) packet must be dropped. */
    bool StepAqm(Ptr<QueueDiscItem> item, Time sojourn);
    bool Roll(double probability);
    void UpdateProbabilityTraces();

    // Attributes
    uint32_t m_limit;
    Time m_target;
    Time m_tUpdate;
    double m_alpha;
    double m_beta;
    double m_k;
    LAqmMode m_lAqm;
    Time m_stepThreshold;
    uint32_t m_minQlenStep;
    Time m_rampMin;
    Time m_rampRange;
    bool m_dropOnOverload;
    bool m_dropEarly;
    uint32_t m_classicProtectionPercent;
    uint32_t m_mtu;
    bool m_anyEct;
    bool m_externalControl;

    // State
    TracedValue<double> m_pPrime;  //!< base probability p'
    TracedValue<double> m_pCL;     //!< coupled L probability k p' (capped at 1)
    TracedValue<double> m_pC;      //!< classic probability p'^2
    Time m_qdelayPrev;
    int64_t m_cProtectionCredit;
    int64_t m_cProtectionInit;
    EventId m_updateEvent;
    Ptr<UniformRandomVariable> m_uv;
    Counters m_counters;
    std::function<void()> m_externalHook;

    TracedCallback<Time> m_traceSojournL;  //!< sojourn of each L packet leaving the disc
    TracedCallback<Time> m_traceSojournC;  //!< sojourn of each C packet leaving the disc
};

} // namespace ns3

#endif // DUAL_PI2_QUEUE_DISC_H
