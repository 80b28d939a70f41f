/*
 * Per-packet queue accounting kept in C++ and drained from Python.
 *
 * A Python trace sink costs about 12 us per packet; this probe records each
 * departing packet's sojourn and, every Interval, a sample of lengths,
 * probabilities and event counts into plain vectors that Python copies out
 * with one call per column.
 */
#ifndef QUEUE_DISC_PROBE_H
#define QUEUE_DISC_PROBE_H

#include "dual-pi2-queue-disc.h"

#include "ns3/event-id.h"
#include "ns3/nstime.h"
#include "ns3/object.h"
#include "ns3/queue-disc.h"

#include <vector>

namespace ns3
{

/**
 * Records per-packet sojourn and periodic samples of any QueueDisc; knows
 * DualPi2QueueDisc's two queues and probabilities.
 */
class QueueDiscProbe : public Object
{
  public:
    static TypeId GetTypeId();
    QueueDiscProbe();
    ~QueueDiscProbe() override;

    /** Start probing @p disc: sojourn of every packet, a sample every @p interval. */
    void Attach(Ptr<QueueDisc> disc, Time interval);

    // Per-packet sojourn (columns of equal length).
    std::vector<double> sojournTime;     //!< dequeue time, s
    std::vector<float> sojournMs;        //!< sojourn, ms
    std::vector<uint8_t> sojournQueue;   //!< 1 = L, 0 = C

    // Periodic samples (columns of equal length).
    std::vector<double> sampleTime;      //!< s
    std::vector<uint32_t> cLenPkts, lLenPkts, cLenBytes, lLenBytes;
    std::vector<double> pPrime, pCL, pC;
    std::vector<uint64_t> departedBytes;
    std::vector<uint32_t> cMarks, lMarks, cDrops, lDrops, tailDrops;

    /** Forget what was drained already (keeps memory flat in long runs). */
    void Clear();

  protected:
    void DoDispose() override;

  private:
    void OnSojourn(bool isL, Time sojourn);
    void OnSojournL(Time sojourn);
    void OnSojournC(Time sojourn);
    void OnDequeue(Ptr<const QueueDiscItem> item);
    void Sample();

    Ptr<QueueDisc> m_disc;
    Ptr<DualPi2QueueDisc> m_dual;
    Time m_interval;
    EventId m_event;
    DualPi2QueueDisc::Counters m_last;
    uint64_t m_lastSentBytes;
    uint64_t m_lastDrops;
    uint64_t m_lastMarks;
};

} // namespace ns3

#endif // QUEUE_DISC_PROBE_H
