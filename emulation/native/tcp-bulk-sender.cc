/*
 * A bulk TCP sender whose congestion control and ECN use are chosen per flow.
 */
#include "tcp-bulk-sender.h"

#include "tcp-transport.h"

#include "ns3/boolean.h"
#include "ns3/log.h"
#include "ns3/packet.h"
#include "ns3/tcp-l4-protocol.h"
#include "ns3/uinteger.h"

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("TcpBulkSender");
NS_OBJECT_ENSURE_REGISTERED(TcpBulkSender);

TypeId
TcpBulkSender::GetTypeId()
{
    static TypeId tid =
        TypeId("ns3::TcpBulkSender")
            .SetParent<Application>()
            .SetGroupName("Applications")
            .AddConstructor<TcpBulkSender>()
            .AddAttribute("Remote",
                          "Address and port of the receiving PacketSink.",
                          AddressValue(),
                          MakeAddressAccessor(&TcpBulkSender::m_remote),
                          MakeAddressChecker())
            .AddAttribute("CongestionControl",
                          "TypeId of the TcpCongestionOps of this flow (e.g. ns3::TcpPrague, ns3::TcpCubic).",
                          TypeIdValue(TypeId::LookupByName("ns3::TcpCubic")),
                          MakeTypeIdAccessor(&TcpBulkSender::m_congestionControl),
                          MakeTypeIdChecker())
            .AddAttribute("UseEcn",
                          "Classic controls: negotiate RFC 3168 ECN (ECT(0)). Scalable ones (DCTCP, Prague) always use ECN.",
                          BooleanValue(false),
                          MakeBooleanAccessor(&TcpBulkSender::m_useEcn),
                          MakeBooleanChecker())
            .AddAttribute("UseEct0",
                          "Scalable controls: mark ECT(0) instead of the L4S identifier ECT(1).",
                          BooleanValue(false),
                          MakeBooleanAccessor(&TcpBulkSender::m_useEct0),
                          MakeBooleanChecker())
            .AddAttribute("SendSize",
                          "Bytes handed to the socket per write.",
                          UintegerValue(1448 * 10),
                          MakeUintegerAccessor(&TcpBulkSender::m_sendSize),
                          MakeUintegerChecker<uint32_t>(1))
            .AddAttribute("MaxBytes",
                          "Bytes to send in total; 0 means no limit.",
                          UintegerValue(0),
                          MakeUintegerAccessor(&TcpBulkSender::m_maxBytes),
                          MakeUintegerChecker<uint64_t>());
    return tid;
}

TcpBulkSender::TcpBulkSender()
    : m_useEcn(false),
      m_useEct0(false),
      m_sendSize(1448 * 10),
      m_maxBytes(0),
      m_connected(false),
      m_totalBytes(0)
{
}

TcpBulkSender::~TcpBulkSender() = default;

uint64_t
TcpBulkSender::GetTotalBytesSent() const
{
    return m_totalBytes;
}

Ptr<Socket>
TcpBulkSender::GetSocket() const
{
    return m_socket;
}

void
TcpBulkSender::DoDispose()
{
    m_socket = nullptr;
    Application::DoDispose();
}

void
TcpBulkSender::StartApplication()
{
    NS_LOG_FUNCTION(this);
    Ptr<TcpL4Protocol> tcp = GetNode()->GetObject<TcpL4Protocol>();
    NS_ABORT_MSG_IF(!tcp, "TcpBulkSender needs an internet stack on its node");
    m_socket = tcp->CreateSocket(m_congestionControl);
    ConfigureTcpTransport(m_socket, m_congestionControl, m_useEcn, m_useEct0);
    m_socket->Bind();
    m_socket->Connect(m_remote);
    m_socket->ShutdownRecv();
    m_socket->SetConnectCallback(MakeCallback(&TcpBulkSender::ConnectionSucceeded, this),
                                 MakeCallback(&TcpBulkSender::ConnectionFailed, this));
    m_socket->SetSendCallback(MakeCallback(&TcpBulkSender::SendData, this));
}

void
TcpBulkSender::StopApplication()
{
    NS_LOG_FUNCTION(this);
    if (m_socket)
    {
        m_socket->Close();
        m_connected = false;
    }
}

void
TcpBulkSender::ConnectionSucceeded(Ptr<Socket> socket)
{
    m_connected = true;
    SendData(socket, socket->GetTxAvailable());
}

void
TcpBulkSender::ConnectionFailed(Ptr<Socket> socket)
{
    NS_LOG_WARN("TcpBulkSender: connection to the sink failed");
}

void
TcpBulkSender::SendData(Ptr<Socket> socket, uint32_t available)
{
    while (m_connected && (m_maxBytes == 0 || m_totalBytes < m_maxBytes))
    {
        uint64_t toSend = m_sendSize;
        if (m_maxBytes > 0)
        {
            toSend = std::min<uint64_t>(toSend, m_maxBytes - m_totalBytes);
        }
        if (socket->GetTxAvailable() < toSend)
        {
            return;
        }
        int sent = socket->Send(Create<Packet>(static_cast<uint32_t>(toSend)));
        if (sent <= 0)
        {
            return;
        }
        m_totalBytes += sent;
    }
    if (m_maxBytes > 0 && m_totalBytes >= m_maxBytes && m_connected)
    {
        socket->Close();
        m_connected = false;
    }
}

} // namespace ns3
