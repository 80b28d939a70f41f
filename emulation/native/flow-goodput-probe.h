/*
 * Per-flow goodput time series at the receivers, kept in C++.
 */
#ifndef FLOW_GOODPUT_PROBE_H
#define FLOW_GOODPUT_PROBE_H

#include "ns3/address.h"
#include "ns3/application.h"
#include "ns3/event-id.h"
#include "ns3/nstime.h"
#include "ns3/object.h"
#include "ns3/packet.h"

#include <vector>

namespace ns3
{

/**
 * Counts bytes received by each flow's sink application ("Rx" trace) and
 * samples them every Interval; also keeps first/last receive times so
 * throughput can be taken over the span a flow really received.
 */
class FlowGoodputProbe : public Object
{
  public:
    static TypeId GetTypeId();
    FlowGoodputProbe();
    ~FlowGoodputProbe() override;

    /** Watch @p sink (any application with an "Rx" trace); returns the flow index. */
    uint32_t AddSink(Ptr<Application> sink);
    void Start(Time interval);

    std::vector<double> sampleTime;        //!< s, one entry per sample
    std::vector<uint64_t> sampleRxBytes;   //!< flows x samples, row-major by sample
    std::vector<uint64_t> totalRxBytes;    //!< per flow
    std::vector<double> firstRxTime;       //!< per flow, s (-1 before any)
    std::vector<double> lastRxTime;        //!< per flow, s

  protected:
    void DoDispose() override;

  private:
    void OnRx(uint32_t flow, Ptr<const Packet> packet, const Address& from);
    void Sample();

    Time m_interval;
    EventId m_event;
    std::vector<uint64_t> m_lastTotal;
};

} // namespace ns3

#endif // FLOW_GOODPUT_PROBE_H
