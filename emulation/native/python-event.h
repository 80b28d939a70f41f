/*
 * Schedule a Python callable in simulated time.
 *
 * cppyy cannot instantiate Simulator::Schedule's templates for a Python
 * function, but it converts a callable to std::function; this thin wrapper
 * is how Python control points (ticks of a few ms) enter the event loop.
 */
#ifndef PYTHON_EVENT_H
#define PYTHON_EVENT_H

#include "ns3/event-id.h"
#include "ns3/nstime.h"

#include <functional>

namespace ns3
{

/** Run @p fn after @p delay of simulated time. */
EventId ScheduleFunction(Time delay, std::function<void()> fn);

} // namespace ns3

#endif // PYTHON_EVENT_H
