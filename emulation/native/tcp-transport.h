/*
 * The one rule for a per-application TCP transport: its congestion control
 * and the ECN that goes with it. TcpBulkSender, VideoServer and VideoClient
 * all configure their sockets here, so every sender decides "is this a
 * scalable (L4S) control" the same way.
 */
#ifndef TCP_TRANSPORT_H
#define TCP_TRANSPORT_H

#include "ns3/ptr.h"
#include "ns3/socket.h"
#include "ns3/type-id.h"

namespace ns3
{

/**
 * Whether @p congestionControl is a scalable (L4S) control: one with a
 * UseEct0 attribute, which switches ECN on by itself in its Init()
 * (TcpDctcp and its subclasses, TcpPrague).
 */
bool IsScalableCongestionControl(TypeId congestionControl);

/**
 * Give @p socket (a TcpSocketBase) a new instance of @p congestionControl.
 *
 * A scalable control marks ECT(1), or ECT(0) if @p useEct0; any other control
 * negotiates classic RFC 3168 ECN (ECT(0)) if @p useClassicEcn, else no ECN.
 */
void ConfigureTcpTransport(Ptr<Socket> socket,
                           TypeId congestionControl,
                           bool useClassicEcn,
                           bool useEct0);

} // namespace ns3

#endif // TCP_TRANSPORT_H
