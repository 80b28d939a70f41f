/*
 * A bulk TCP sender whose congestion control and ECN use are chosen per flow.
 *
 * ns-3's BulkSendApplication takes both from node-wide defaults; a dumbbell
 * mixing L4S (Prague or DCTCP, ECT(1)) and classic (Cubic with or without ECN)
 * flows needs them per application.
 */
#ifndef TCP_BULK_SENDER_H
#define TCP_BULK_SENDER_H

#include "ns3/address.h"
#include "ns3/application.h"
#include "ns3/socket.h"
#include "ns3/traced-callback.h"

namespace ns3
{

/**
 * @ingroup applications
 * Sends as fast as TCP allows to Remote, with a per-flow CongestionOps and ECN mode.
 */
class TcpBulkSender : public Application
{
  public:
    static TypeId GetTypeId();
    TcpBulkSender();
    ~TcpBulkSender() override;

    /** Bytes handed to the socket so far. */
    uint64_t GetTotalBytesSent() const;
    Ptr<Socket> GetSocket() const;

  protected:
    void DoDispose() override;

  private:
    void StartApplication() override;
    void StopApplication() override;
    void SendData(Ptr<Socket> socket, uint32_t available);
    void ConnectionSucceeded(Ptr<Socket> socket);
    void ConnectionFailed(Ptr<Socket> socket);

    Address m_remote;
    TypeId m_congestionControl;
    bool m_useEcn;
    bool m_useEct0;
    uint32_t m_sendSize;
    uint64_t m_maxBytes;
    Ptr<Socket> m_socket;
    bool m_connected;
    uint64_t m_totalBytes;
};

} // namespace ns3

#endif // TCP_BULK_SENDER_H
