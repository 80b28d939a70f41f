/*
 * The server side of a packet-level video session.
 */
#include "video-server.h"

#include "tcp-transport.h"

#include "ns3/boolean.h"
#include "ns3/inet-socket-address.h"
#include "ns3/log.h"
#include "ns3/tcp-l4-protocol.h"
#include "ns3/uinteger.h"

#include <algorithm>
#include <limits>

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("VideoServer");
NS_OBJECT_ENSURE_REGISTERED(VideoServer);

TypeId
VideoServer::GetTypeId()
{
    static TypeId tid =
        TypeId("ns3::VideoServer")
            .SetParent<Application>()
            .SetGroupName("Applications")
            .AddConstructor<VideoServer>()
            .AddAttribute("Port",
                          "TCP port the server listens on.",
                          UintegerValue(8080),
                          MakeUintegerAccessor(&VideoServer::m_port),
                          MakeUintegerChecker<uint16_t>())
            .AddAttribute("CongestionControl",
                          "TypeId of the TcpCongestionOps sending the chunks (e.g. ns3::TcpCubic).",
                          TypeIdValue(TypeId::LookupByName("ns3::TcpCubic")),
                          MakeTypeIdAccessor(&VideoServer::m_congestionControl),
                          MakeTypeIdChecker())
            .AddAttribute("UseEct0",
                          "Scalable controls (Prague, DCTCP): mark ECT(0) instead of the L4S identifier ECT(1).",
                          BooleanValue(false),
                          MakeBooleanAccessor(&VideoServer::m_useEct0),
                          MakeBooleanChecker())
            .AddTraceSource("RequestServed",
                            "The last byte of a request was handed to TCP.",
                            MakeTraceSourceAccessor(&VideoServer::m_servedTrace),
                            "ns3::VideoServer::RequestTracedCallback");
    return tid;
}

VideoServer::VideoServer()
    : m_port(8080),
      m_useEct0(false),
      m_requestsServed(0),
      m_totalBytes(0)
{
    NS_LOG_FUNCTION(this);
}

VideoServer::~VideoServer() = default;

Ptr<Packet>
VideoServer::SerializeRequest(const Request& request)
{
    uint8_t data[REQUEST_SIZE];
    for (int i = 0; i < 4; ++i)
    {
        data[i] = static_cast<uint8_t>(request.chunk >> (24 - 8 * i));
        data[4 + i] = static_cast<uint8_t>(request.quality >> (24 - 8 * i));
    }
    for (int i = 0; i < 8; ++i)
    {
        data[8 + i] = static_cast<uint8_t>(request.bytes >> (56 - 8 * i));
    }
    return Create<Packet>(data, REQUEST_SIZE);
}

VideoServer::Request
VideoServer::DeserializeRequest(const uint8_t* data)
{
    Request request{0, 0, 0};
    for (int i = 0; i < 4; ++i)
    {
        request.chunk = (request.chunk << 8) | data[i];
        request.quality = (request.quality << 8) | data[4 + i];
    }
    for (int i = 0; i < 8; ++i)
    {
        request.bytes = (request.bytes << 8) | data[8 + i];
    }
    return request;
}

uint64_t
VideoServer::GetRequestsServed() const
{
    return m_requestsServed;
}

uint64_t
VideoServer::GetTotalBytesSent() const
{
    return m_totalBytes;
}

void
VideoServer::DoDispose()
{
    NS_LOG_FUNCTION(this);
    m_listener = nullptr;
    m_connections.clear();
    Application::DoDispose();
}

void
VideoServer::StartApplication()
{
    NS_LOG_FUNCTION(this);
    Ptr<TcpL4Protocol> tcp = GetNode()->GetObject<TcpL4Protocol>();
    NS_ABORT_MSG_IF(!tcp, "VideoServer needs an internet stack on its node");
    m_listener = tcp->CreateSocket(m_congestionControl);
    ConfigureTcpTransport(m_listener, m_congestionControl, false, m_useEct0);
    NS_ABORT_MSG_IF(m_listener->Bind(InetSocketAddress(Ipv4Address::GetAny(), m_port)) != 0,
                    "VideoServer cannot bind port " << m_port);
    m_listener->Listen();
    m_listener->SetAcceptCallback(MakeNullCallback<bool, Ptr<Socket>, const Address&>(),
                                  MakeCallback(&VideoServer::HandleAccept, this));
}

void
VideoServer::StopApplication()
{
    NS_LOG_FUNCTION(this);
    // Moved out first: closing may call HandleClose, which erases from the map.
    std::map<Ptr<Socket>, Connection> connections;
    connections.swap(m_connections);
    for (auto& [socket, connection] : connections)
    {
        socket->Close();
    }
    if (m_listener)
    {
        m_listener->Close();
    }
}

void
VideoServer::HandleAccept(Ptr<Socket> socket, const Address& from)
{
    NS_LOG_FUNCTION(this << socket << from);
    m_connections[socket] = Connection();
    // A fresh congestion control, not the fork of the listener's: the wheel's TcpCubic copy leaves state
    // uninitialised, so a forked sender's dynamics followed the heap's contents (and with them the Python
    // allocations of the run: a served run and a separate-agent run of one seed diverged).
    ConfigureTcpTransport(socket, m_congestionControl, false, m_useEct0);
    socket->SetRecvCallback(MakeCallback(&VideoServer::HandleRead, this));
    socket->SetSendCallback(MakeCallback(&VideoServer::HandleSend, this));
    socket->SetCloseCallbacks(MakeCallback(&VideoServer::HandleClose, this),
                              MakeCallback(&VideoServer::HandleClose, this));
}

void
VideoServer::HandleRead(Ptr<Socket> socket)
{
    auto it = m_connections.find(socket);
    if (it == m_connections.end())
    {
        return;
    }
    Connection& connection = it->second;
    Ptr<Packet> packet;
    while ((packet = socket->Recv()) && packet->GetSize() > 0)
    {
        size_t old = connection.pending.size();
        connection.pending.resize(old + packet->GetSize());
        packet->CopyData(connection.pending.data() + old, packet->GetSize());
    }
    size_t parsed = 0;
    while (connection.pending.size() - parsed >= REQUEST_SIZE)
    {
        Request request = DeserializeRequest(connection.pending.data() + parsed);
        NS_LOG_INFO("request chunk " << request.chunk << " quality " << request.quality << " bytes "
                                     << request.bytes);
        connection.queue.push_back(request);
        parsed += REQUEST_SIZE;
    }
    connection.pending.erase(connection.pending.begin(), connection.pending.begin() + parsed);
    SendQueued(socket);
}

void
VideoServer::HandleSend(Ptr<Socket> socket, uint32_t available)
{
    SendQueued(socket);
}

void
VideoServer::HandleClose(Ptr<Socket> socket)
{
    NS_LOG_FUNCTION(this << socket);
    m_connections.erase(socket);
}

void
VideoServer::SendQueued(Ptr<Socket> socket)
{
    auto it = m_connections.find(socket);
    if (it == m_connections.end())
    {
        return;
    }
    Connection& connection = it->second;
    while (!connection.queue.empty())
    {
        const Request& head = connection.queue.front();
        uint64_t left = head.bytes - connection.headSent;
        if (left > 0)
        {
            uint32_t size = static_cast<uint32_t>(
                std::min<uint64_t>({left, socket->GetTxAvailable(), std::numeric_limits<uint32_t>::max()}));
            if (size == 0)
            {
                return; // HandleSend resumes when TCP frees buffer space
            }
            int sent = socket->Send(Create<Packet>(size));
            if (sent <= 0)
            {
                return;
            }
            connection.headSent += sent;
            m_totalBytes += sent;
            continue;
        }
        m_servedTrace(head.chunk, head.quality, head.bytes);
        ++m_requestsServed;
        connection.queue.pop_front();
        connection.headSent = 0;
    }
}

} // namespace ns3
