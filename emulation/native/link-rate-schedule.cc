/*
 * Make a point-to-point link follow a bandwidth trace.
 */
#include "link-rate-schedule.h"

#include "ns3/boolean.h"
#include "ns3/log.h"
#include "ns3/simulator.h"

#include <cmath>

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("LinkRateSchedule");
NS_OBJECT_ENSURE_REGISTERED(LinkRateSchedule);

TypeId
LinkRateSchedule::GetTypeId()
{
    static TypeId tid =
        TypeId("ns3::LinkRateSchedule")
            .SetParent<Object>()
            .SetGroupName("PointToPoint")
            .AddConstructor<LinkRateSchedule>()
            .AddAttribute("MinRate",
                          "Floor for the trace's rates (bit/s): a zero rate breaks transmit-time arithmetic.",
                          DataRateValue(DataRate("50kbps")),
                          MakeDataRateAccessor(&LinkRateSchedule::m_minRate),
                          MakeDataRateChecker())
            .AddAttribute("Repeat",
                          "Wrap the trace around when the simulation outlasts it; else hold the last rate.",
                          BooleanValue(true),
                          MakeBooleanAccessor(&LinkRateSchedule::m_repeat),
                          MakeBooleanChecker())
            .AddTraceSource("RateChange",
                            "The device's rate was set.",
                            MakeTraceSourceAccessor(&LinkRateSchedule::m_rateTrace),
                            "ns3::LinkRateSchedule::RateTracedCallback");
    return tid;
}

LinkRateSchedule::LinkRateSchedule()
    : m_minRate("50kbps"),
      m_repeat(true),
      m_next(0),
      m_changes(0)
{
    NS_LOG_FUNCTION(this);
}

LinkRateSchedule::~LinkRateSchedule() = default;

void
LinkRateSchedule::Install(Ptr<PointToPointNetDevice> device,
                          std::vector<double> timesS,
                          std::vector<double> ratesBps)
{
    NS_LOG_FUNCTION(this << device);
    NS_ABORT_MSG_IF(!device, "LinkRateSchedule: no device");
    NS_ABORT_MSG_IF(timesS.size() < 2 || timesS.size() != ratesBps.size(),
                    "LinkRateSchedule: need equal-length times and rates, at least 2, got "
                        << timesS.size() << " and " << ratesBps.size());
    m_offsets.clear();
    m_rates.clear();
    for (size_t i = 0; i < timesS.size(); ++i)
    {
        NS_ABORT_MSG_IF(i > 0 && !(timesS[i] > timesS[i - 1]),
                        "LinkRateSchedule: times must increase strictly (index " << i << ")");
        NS_ABORT_MSG_IF(!std::isfinite(ratesBps[i]) || ratesBps[i] < 0,
                        "LinkRateSchedule: bad rate " << ratesBps[i] << " at index " << i);
        m_offsets.push_back(Seconds(timesS[i] - timesS[0]));
        uint64_t bps = static_cast<uint64_t>(std::llround(ratesBps[i]));
        m_rates.push_back(std::max(DataRate(bps), m_minRate));
    }
    m_device = device;
    m_event.Cancel();
    m_next = 0;
    m_periodBase = Simulator::Now();
    Apply();
}

uint64_t
LinkRateSchedule::GetChangesApplied() const
{
    return m_changes;
}

void
LinkRateSchedule::DoDispose()
{
    NS_LOG_FUNCTION(this);
    m_event.Cancel();
    m_device = nullptr;
    Object::DoDispose();
}

void
LinkRateSchedule::Apply()
{
    NS_LOG_INFO("rate " << m_rates[m_next] << " at " << Simulator::Now().As(Time::S));
    m_device->SetDataRate(m_rates[m_next]);
    ++m_changes;
    m_rateTrace(m_rates[m_next]);
    // With Repeat the last sample marks the period's end, where index 0 starts again.
    size_t last = m_repeat ? m_offsets.size() - 2 : m_offsets.size() - 1;
    if (m_next < last)
    {
        ++m_next;
    }
    else if (m_repeat)
    {
        m_next = 0;
        m_periodBase += m_offsets.back();
    }
    else
    {
        return;
    }
    Time at = m_periodBase + m_offsets[m_next];
    m_event = Simulator::Schedule(at - Simulator::Now(), &LinkRateSchedule::Apply, this);
}

} // namespace ns3
