/*
 * Real-time health of a run under RealtimeSimulatorImpl.
 */
#include "realtime-lateness-probe.h"

#include "ns3/log.h"
#include "ns3/realtime-simulator-impl.h"
#include "ns3/simulator.h"

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("RealtimeLatenessProbe");
NS_OBJECT_ENSURE_REGISTERED(RealtimeLatenessProbe);

TypeId
RealtimeLatenessProbe::GetTypeId()
{
    static TypeId tid =
        TypeId("ns3::RealtimeLatenessProbe")
            .SetParent<Object>()
            .SetGroupName("Core")
            .AddConstructor<RealtimeLatenessProbe>()
            .AddAttribute("Interval",
                          "Time between samples (simulated = real time).",
                          TimeValue(MilliSeconds(1)),
                          MakeTimeAccessor(&RealtimeLatenessProbe::m_interval),
                          MakeTimeChecker(MicroSeconds(10)))
            .AddAttribute("Limit",
                          "Lateness at which the probe stops the simulator (0 = never).",
                          TimeValue(MilliSeconds(100)),
                          MakeTimeAccessor(&RealtimeLatenessProbe::m_limit),
                          MakeTimeChecker(Time(0)))
            .AddTraceSource("LimitExceeded",
                            "A sample ran later than Limit; the simulator is being stopped.",
                            MakeTraceSourceAccessor(&RealtimeLatenessProbe::m_limitExceededTrace),
                            "ns3::RealtimeLatenessProbe::LimitExceededTracedCallback");
    return tid;
}

RealtimeLatenessProbe::RealtimeLatenessProbe()
    : m_exceededAtS(-1.0)
{
}

RealtimeLatenessProbe::~RealtimeLatenessProbe() = default;

void
RealtimeLatenessProbe::DoDispose()
{
    Simulator::Cancel(m_event);
    m_impl = nullptr;
    Object::DoDispose();
}

void
RealtimeLatenessProbe::Start()
{
    m_impl = DynamicCast<RealtimeSimulatorImpl>(Simulator::GetImplementation());
    NS_ABORT_MSG_IF(!m_impl, "RealtimeLatenessProbe: the simulator is not a RealtimeSimulatorImpl");
    m_event = Simulator::Schedule(m_interval, &RealtimeLatenessProbe::Sample, this);
}

bool
RealtimeLatenessProbe::IsLimitExceeded() const
{
    return m_exceededAtS >= 0;
}

double
RealtimeLatenessProbe::GetExceededAtS() const
{
    return m_exceededAtS;
}

double
RealtimeLatenessProbe::GetRealtimeNowS() const
{
    return m_impl ? m_impl->RealtimeNow().GetSeconds() : 0.0;
}

void
RealtimeLatenessProbe::Sample()
{
    Time lateness = m_impl->RealtimeNow() - Simulator::Now();
    latenessMs.push_back(static_cast<float>(lateness.GetSeconds() * 1e3));
    if (m_limit.IsStrictlyPositive() && lateness > m_limit)
    {
        NS_LOG_WARN("lateness " << lateness.As(Time::MS) << " above the limit " << m_limit.As(Time::MS));
        m_exceededAtS = Simulator::Now().GetSeconds();
        m_limitExceededTrace(lateness);
        Simulator::Stop();
        return;
    }
    m_event = Simulator::Schedule(m_interval, &RealtimeLatenessProbe::Sample, this);
}

} // namespace ns3
