/*
 * Make a point-to-point link follow a bandwidth trace.
 *
 * All rate changes are scheduled in C++, one event at a time, so a trace with
 * thousands of steps costs no Python and no memory up front; a repeating trace
 * runs for as long as the simulation does.
 */
#ifndef LINK_RATE_SCHEDULE_H
#define LINK_RATE_SCHEDULE_H

#include "ns3/data-rate.h"
#include "ns3/event-id.h"
#include "ns3/nstime.h"
#include "ns3/object.h"
#include "ns3/point-to-point-net-device.h"
#include "ns3/traced-callback.h"

#include <vector>

namespace ns3
{

/**
 * Sets a PointToPointNetDevice's DataRate from a piecewise-constant trace.
 *
 * Step convention: rate i holds from time i until time i + 1. Times are trace
 * times; the trace's first time maps to the moment Install is called. With
 * Repeat the trace wraps with period (last time - first time), the last
 * sample only marking the end; without it the last sample's rate holds
 * forever.
 *
 * Rates below MinRate are raised to it: ns-3 computes a packet's transmit
 * time as size / rate, which a zero rate breaks. The floor leaks MinRate of
 * capacity during an outage, and a packet that starts at the floor occupies
 * the link for size / MinRate (0.24 s for 1500 B at the default 50 kb/s),
 * since a rate change applies from the next packet on.
 */
class LinkRateSchedule : public Object
{
  public:
    static TypeId GetTypeId();
    LinkRateSchedule();
    ~LinkRateSchedule() override;

    /**
     * Apply the trace to @p device from now on: the first rate at once, the
     * others as their times come.
     * @param device the link's transmitting device (one direction)
     * @param timesS trace times, strictly increasing (s)
     * @param ratesBps rate from each time on (bit/s), same length, at least 2
     */
    void Install(Ptr<PointToPointNetDevice> device, std::vector<double> timesS, std::vector<double> ratesBps);

    /** Rate changes applied so far. */
    uint64_t GetChangesApplied() const;

    /**
     * TracedCallback signature of a rate change.
     * @param [in] rate the rate set (after the floor)
     */
    typedef void (*RateTracedCallback)(DataRate rate);

  protected:
    void DoDispose() override;

  private:
    /** Set rate m_next and schedule the one after. */
    void Apply();

    DataRate m_minRate;
    bool m_repeat;
    Ptr<PointToPointNetDevice> m_device;
    std::vector<Time> m_offsets; //!< trace times relative to the first
    std::vector<DataRate> m_rates;
    size_t m_next;     //!< index of the change Apply makes
    Time m_periodBase; //!< simulation time the current period started
    uint64_t m_changes;
    EventId m_event;
    TracedCallback<DataRate> m_rateTrace;
};

} // namespace ns3

#endif // LINK_RATE_SCHEDULE_H
