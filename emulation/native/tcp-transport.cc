/*
 * Per-application TCP transport: congestion control and ECN.
 */
#include "tcp-transport.h"

#include "ns3/abort.h"
#include "ns3/boolean.h"
#include "ns3/object-factory.h"
#include "ns3/tcp-congestion-ops.h"
#include "ns3/tcp-socket-base.h"

namespace ns3
{

bool
IsScalableCongestionControl(TypeId congestionControl)
{
    TypeId::AttributeInformation info;
    return congestionControl.LookupAttributeByName("UseEct0", &info);
}

void
ConfigureTcpTransport(Ptr<Socket> socket, TypeId congestionControl, bool useClassicEcn, bool useEct0)
{
    Ptr<TcpSocketBase> base = DynamicCast<TcpSocketBase>(socket);
    NS_ABORT_MSG_IF(!base, "ConfigureTcpTransport needs a TcpSocketBase");
    ObjectFactory factory;
    factory.SetTypeId(congestionControl);
    bool scalable = IsScalableCongestionControl(congestionControl);
    if (scalable)
    {
        factory.Set("UseEct0", BooleanValue(useEct0));
    }
    base->SetCongestionControlAlgorithm(factory.Create<TcpCongestionOps>());
    if (!scalable)
    {
        base->SetUseEcn(useClassicEcn ? TcpSocketState::On : TcpSocketState::Off);
    }
}

} // namespace ns3
