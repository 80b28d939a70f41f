/*
 * DCTCP with the conventional loss response of RFC 8257 sec. 3.4.
 */
#include "tcp-dctcp-rfc8257.h"

#include "ns3/log.h"

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("TcpDctcpRfc8257");
NS_OBJECT_ENSURE_REGISTERED(TcpDctcpRfc8257);

TypeId
TcpDctcpRfc8257::GetTypeId()
{
    static TypeId tid = TypeId("ns3::TcpDctcpRfc8257")
                            .SetParent<TcpDctcp>()
                            .SetGroupName("Internet")
                            .AddConstructor<TcpDctcpRfc8257>();
    return tid;
}

TcpDctcpRfc8257::TcpDctcpRfc8257() = default;

TcpDctcpRfc8257::TcpDctcpRfc8257(const TcpDctcpRfc8257& sock) = default;

TcpDctcpRfc8257::~TcpDctcpRfc8257() = default;

std::string
TcpDctcpRfc8257::GetName() const
{
    return "TcpDctcpRfc8257";
}

uint32_t
TcpDctcpRfc8257::GetSsThresh(Ptr<const TcpSocketState> tcb, uint32_t bytesInFlight)
{
    // An ECE-triggered window reduction keeps DCTCP's proportional response;
    // anything else reaching here is a loss episode: halve like Reno.
    if (tcb->m_ecnState == TcpSocketState::ECN_ECE_RCVD)
    {
        return TcpDctcp::GetSsThresh(tcb, bytesInFlight);
    }
    NS_LOG_INFO("loss response: halving cwnd " << tcb->m_cWnd);
    return std::max<uint32_t>(2 * tcb->m_segmentSize, bytesInFlight / 2);
}

Ptr<TcpCongestionOps>
TcpDctcpRfc8257::Fork()
{
    return CopyObject<TcpDctcpRfc8257>(this);
}

} // namespace ns3
