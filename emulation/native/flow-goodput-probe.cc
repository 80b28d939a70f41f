/*
 * Per-flow goodput time series at the receivers, kept in C++.
 */
#include "flow-goodput-probe.h"

#include "ns3/callback.h"
#include "ns3/log.h"
#include "ns3/simulator.h"

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("FlowGoodputProbe");
NS_OBJECT_ENSURE_REGISTERED(FlowGoodputProbe);

TypeId
FlowGoodputProbe::GetTypeId()
{
    static TypeId tid = TypeId("ns3::FlowGoodputProbe")
                            .SetParent<Object>()
                            .SetGroupName("Applications")
                            .AddConstructor<FlowGoodputProbe>();
    return tid;
}

FlowGoodputProbe::FlowGoodputProbe() = default;
FlowGoodputProbe::~FlowGoodputProbe() = default;

void
FlowGoodputProbe::DoDispose()
{
    Simulator::Cancel(m_event);
    Object::DoDispose();
}

uint32_t
FlowGoodputProbe::AddSink(Ptr<Application> sink)
{
    uint32_t flow = totalRxBytes.size();
    totalRxBytes.push_back(0);
    firstRxTime.push_back(-1.0);
    lastRxTime.push_back(-1.0);
    m_lastTotal.push_back(0);
    bool ok = sink->TraceConnectWithoutContext("Rx", MakeCallback(&FlowGoodputProbe::OnRx, this).Bind(flow));
    NS_ABORT_MSG_IF(!ok, "FlowGoodputProbe: application has no Rx trace source");
    return flow;
}

void
FlowGoodputProbe::Start(Time interval)
{
    NS_ABORT_MSG_IF(interval <= Time(0), "FlowGoodputProbe: interval must be positive");
    m_interval = interval;
    m_event = Simulator::Schedule(m_interval, &FlowGoodputProbe::Sample, this);
}

void
FlowGoodputProbe::OnRx(uint32_t flow, Ptr<const Packet> packet, const Address& from)
{
    double now = Simulator::Now().GetSeconds();
    totalRxBytes[flow] += packet->GetSize();
    if (firstRxTime[flow] < 0)
    {
        firstRxTime[flow] = now;
    }
    lastRxTime[flow] = now;
}

void
FlowGoodputProbe::Sample()
{
    sampleTime.push_back(Simulator::Now().GetSeconds());
    for (std::size_t f = 0; f < totalRxBytes.size(); f++)
    {
        sampleRxBytes.push_back(totalRxBytes[f] - m_lastTotal[f]);
        m_lastTotal[f] = totalRxBytes[f];
    }
    m_event = Simulator::Schedule(m_interval, &FlowGoodputProbe::Sample, this);
}

} // namespace ns3
