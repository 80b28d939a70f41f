/*
 * Per-packet queue accounting kept in C++ and drained from Python.
 */
#include "queue-disc-probe.h"

#include "ns3/log.h"
#include "ns3/simulator.h"

#include <limits>

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("QueueDiscProbe");
NS_OBJECT_ENSURE_REGISTERED(QueueDiscProbe);

TypeId
QueueDiscProbe::GetTypeId()
{
    static TypeId tid = TypeId("ns3::QueueDiscProbe")
                            .SetParent<Object>()
                            .SetGroupName("TrafficControl")
                            .AddConstructor<QueueDiscProbe>();
    return tid;
}

QueueDiscProbe::QueueDiscProbe()
    : m_lastSentBytes(0),
      m_lastDrops(0),
      m_lastMarks(0)
{
}

QueueDiscProbe::~QueueDiscProbe() = default;

void
QueueDiscProbe::DoDispose()
{
    Simulator::Cancel(m_event);
    m_disc = nullptr;
    m_dual = nullptr;
    Object::DoDispose();
}

void
QueueDiscProbe::Attach(Ptr<QueueDisc> disc, Time interval)
{
    NS_ABORT_MSG_IF(interval <= Time(0), "QueueDiscProbe: interval must be positive");
    m_disc = disc;
    m_interval = interval;
    m_dual = DynamicCast<DualPi2QueueDisc>(disc);
    if (m_dual)
    {
        m_dual->TraceConnectWithoutContext("SojournL", MakeCallback(&QueueDiscProbe::OnSojournL, this));
        m_dual->TraceConnectWithoutContext("SojournC", MakeCallback(&QueueDiscProbe::OnSojournC, this));
    }
    else
    {
        disc->TraceConnectWithoutContext("Dequeue", MakeCallback(&QueueDiscProbe::OnDequeue, this));
    }
    m_event = Simulator::Schedule(m_interval, &QueueDiscProbe::Sample, this);
}

void
QueueDiscProbe::OnSojourn(bool isL, Time sojourn)
{
    sojournTime.push_back(Simulator::Now().GetSeconds());
    sojournMs.push_back(static_cast<float>(sojourn.GetSeconds() * 1e3));
    sojournQueue.push_back(isL ? 1 : 0);
}

void
QueueDiscProbe::OnSojournL(Time sojourn)
{
    OnSojourn(true, sojourn);
}

void
QueueDiscProbe::OnSojournC(Time sojourn)
{
    OnSojourn(false, sojourn);
}

void
QueueDiscProbe::OnDequeue(Ptr<const QueueDiscItem> item)
{
    OnSojourn(false, Simulator::Now() - item->GetTimeStamp());
}

void
QueueDiscProbe::Sample()
{
    sampleTime.push_back(Simulator::Now().GetSeconds());
    const QueueDisc::Stats& stats = m_disc->GetStats();
    uint64_t sent = stats.nTotalSentBytes;
    departedBytes.push_back(sent - m_lastSentBytes);
    m_lastSentBytes = sent;
    if (m_dual)
    {
        const DualPi2QueueDisc::Counters& c = m_dual->GetCounters();
        cLenPkts.push_back(m_dual->GetQueueLength(DualPi2QueueDisc::CLASSIC));
        lLenPkts.push_back(m_dual->GetQueueLength(DualPi2QueueDisc::L4S));
        cLenBytes.push_back(m_dual->GetQueueBytes(DualPi2QueueDisc::CLASSIC));
        lLenBytes.push_back(m_dual->GetQueueBytes(DualPi2QueueDisc::L4S));
        pPrime.push_back(m_dual->GetBaseProbability());
        pCL.push_back(m_dual->GetCoupledProbability());
        pC.push_back(m_dual->GetClassicProbability());
        cMarks.push_back(c.classicMarks - m_last.classicMarks);
        lMarks.push_back((c.coupledMarks + c.stepMarks) - (m_last.coupledMarks + m_last.stepMarks));
        cDrops.push_back(c.classicDrops - m_last.classicDrops);
        lDrops.push_back(c.lDrops - m_last.lDrops);
        tailDrops.push_back(c.tailDrops - m_last.tailDrops);
        m_last = c;
    }
    else
    {
        double nan = std::numeric_limits<double>::quiet_NaN();
        cLenPkts.push_back(m_disc->GetNPackets());
        lLenPkts.push_back(0);
        cLenBytes.push_back(m_disc->GetNBytes());
        lLenBytes.push_back(0);
        pPrime.push_back(nan);
        pCL.push_back(nan);
        pC.push_back(nan);
        uint64_t drops = stats.nTotalDroppedPackets;
        uint64_t marks = stats.nTotalMarkedPackets;
        cMarks.push_back(marks - m_lastMarks);
        lMarks.push_back(0);
        cDrops.push_back(drops - m_lastDrops);
        lDrops.push_back(0);
        tailDrops.push_back(0);
        m_lastDrops = drops;
        m_lastMarks = marks;
    }
    m_event = Simulator::Schedule(m_interval, &QueueDiscProbe::Sample, this);
}

void
QueueDiscProbe::Clear()
{
    for (auto* v : {&sojournTime, &sampleTime, &pPrime, &pCL, &pC})
    {
        v->clear();
    }
    sojournMs.clear();
    sojournQueue.clear();
    for (auto* v : {&cLenPkts, &lLenPkts, &cLenBytes, &lLenBytes, &cMarks, &lMarks, &cDrops, &lDrops, &tailDrops})
    {
        v->clear();
    }
    departedBytes.clear();
}

} // namespace ns3
