/*
 * Real-time health of a run under RealtimeSimulatorImpl: how far the
 * simulator lags the wall clock, sampled by an event of its own.
 */
#ifndef REALTIME_LATENESS_PROBE_H
#define REALTIME_LATENESS_PROBE_H

#include "ns3/event-id.h"
#include "ns3/nstime.h"
#include "ns3/object.h"
#include "ns3/traced-callback.h"

#include <vector>

namespace ns3
{

class RealtimeSimulatorImpl;

/**
 * Every Interval, records the lateness of its own event: the real time
 * elapsed since the simulation started minus the simulated time of the
 * event (RealtimeSimulatorImpl::RealtimeNow() - Simulator::Now()). An idle
 * real-time simulator shows only its wake-up jitter; one that cannot keep up
 * shows growing lateness. Past Limit the probe stops the simulator and says
 * so (IsLimitExceeded), so a run that lost real time ends with its results
 * written instead of ns-3's HardLimit abort.
 */
class RealtimeLatenessProbe : public Object
{
  public:
    static TypeId GetTypeId();
    RealtimeLatenessProbe();
    ~RealtimeLatenessProbe() override;

    /** Start sampling; aborts unless the simulator is a RealtimeSimulatorImpl. */
    void Start();

    /** Whether a sample exceeded Limit (the simulator was stopped then). */
    bool IsLimitExceeded() const;
    /** Simulated time of the sample that exceeded Limit (s); -1 if none. */
    double GetExceededAtS() const;
    /** Real time elapsed since the start of the run (s), as the real-time simulator measures it. */
    double GetRealtimeNowS() const;

    std::vector<float> latenessMs; //!< one entry per sample (ms)

    /**
     * TracedCallback signature of the limit being exceeded.
     * @param [in] lateness how late the sample ran
     */
    typedef void (*LimitExceededTracedCallback)(Time lateness);

  protected:
    void DoDispose() override;

  private:
    void Sample();

    Time m_interval;
    Time m_limit;
    Ptr<RealtimeSimulatorImpl> m_impl;
    EventId m_event;
    double m_exceededAtS;
    TracedCallback<Time> m_limitExceededTrace;
};

} // namespace ns3

#endif // REALTIME_LATENESS_PROBE_H
