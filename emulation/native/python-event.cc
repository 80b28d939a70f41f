/*
 * Schedule a Python callable in simulated time.
 */
#include "python-event.h"

#include "ns3/simulator.h"

namespace ns3
{

static void
RunFunction(std::function<void()> fn)
{
    fn();
}

EventId
ScheduleFunction(Time delay, std::function<void()> fn)
{
    return Simulator::Schedule(delay, &RunFunction, std::move(fn));
}

} // namespace ns3
