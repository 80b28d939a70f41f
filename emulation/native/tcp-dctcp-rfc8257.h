/*
 * DCTCP whose response to packet loss is the conventional halving that
 * RFC 8257 sec. 3.4 requires.
 *
 * ns-3.44's TcpDctcp answers loss with the same (1 - alpha/2) reduction it
 * uses for CE marks; with no marks alpha decays to zero, so over a drop-tail
 * FIFO it hardly backs off at all and starves classic flows, which no real
 * DCTCP or Prague sender does. This class keeps DCTCP's ECN behaviour and
 * restores the loss response.
 */
#ifndef TCP_DCTCP_RFC8257_H
#define TCP_DCTCP_RFC8257_H

#include "ns3/tcp-dctcp.h"

namespace ns3
{

/**
 * @ingroup tcp
 * DCTCP (RFC 8257) with the Reno loss response of sec. 3.4.
 */
class TcpDctcpRfc8257 : public TcpDctcp
{
  public:
    static TypeId GetTypeId();
    TcpDctcpRfc8257();
    TcpDctcpRfc8257(const TcpDctcpRfc8257& sock);
    ~TcpDctcpRfc8257() override;

    std::string GetName() const override;
    uint32_t GetSsThresh(Ptr<const TcpSocketState> tcb, uint32_t bytesInFlight) override;
    Ptr<TcpCongestionOps> Fork() override;
};

} // namespace ns3

#endif // TCP_DCTCP_RFC8257_H
