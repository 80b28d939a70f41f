/*
 * The client side of a packet-level video session.
 */
#include "video-client.h"

#include "tcp-transport.h"
#include "video-server.h"

#include "ns3/boolean.h"
#include "ns3/log.h"
#include "ns3/simulator.h"
#include "ns3/tcp-l4-protocol.h"
#include "ns3/uinteger.h"

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("VideoClient");
NS_OBJECT_ENSURE_REGISTERED(VideoClient);

TypeId
VideoClient::GetTypeId()
{
    static TypeId tid =
        TypeId("ns3::VideoClient")
            .SetParent<Application>()
            .SetGroupName("Applications")
            .AddConstructor<VideoClient>()
            .AddAttribute("Remote",
                          "Address and port of the VideoServer.",
                          AddressValue(),
                          MakeAddressAccessor(&VideoClient::m_remote),
                          MakeAddressChecker())
            .AddAttribute("CongestionControl",
                          "TypeId of this session's TcpCongestionOps; must match the server's "
                          "(ns3::TcpCubic for classic, ns3::TcpPrague or a DCTCP for L4S).",
                          TypeIdValue(TypeId::LookupByName("ns3::TcpCubic")),
                          MakeTypeIdAccessor(&VideoClient::m_congestionControl),
                          MakeTypeIdChecker())
            .AddAttribute("UseEct0",
                          "Scalable controls (Prague, DCTCP): mark ECT(0) instead of the L4S identifier ECT(1).",
                          BooleanValue(false),
                          MakeBooleanAccessor(&VideoClient::m_useEct0),
                          MakeBooleanChecker())
            .AddAttribute("BufferCap",
                          "Playback buffer (s of video) above which the next request waits.",
                          TimeValue(Seconds(60)),
                          MakeTimeAccessor(&VideoClient::m_bufferCap),
                          MakeTimeChecker(Seconds(0)))
            .AddAttribute("WaitStep",
                          "Granularity of the full-buffer wait (s); the wait is a whole number of steps.",
                          TimeValue(MilliSeconds(500)),
                          MakeTimeAccessor(&VideoClient::m_waitStep),
                          MakeTimeChecker(TimeStep(1)))
            .AddAttribute("StartQuality",
                          "Quality index of the first chunk (0 = lowest bitrate).",
                          UintegerValue(1),
                          MakeUintegerAccessor(&VideoClient::m_startQuality),
                          MakeUintegerChecker<uint32_t>())
            .AddTraceSource("ChunkCompleted",
                            "The last byte of a chunk arrived.",
                            MakeTraceSourceAccessor(&VideoClient::m_chunkTrace),
                            "ns3::VideoClient::ChunkTracedCallback")
            .AddTraceSource("StallStart",
                            "The playback buffer ran dry after startup.",
                            MakeTraceSourceAccessor(&VideoClient::m_stallStartTrace),
                            "ns3::VideoClient::StallStartTracedCallback")
            .AddTraceSource("StallEnd",
                            "A chunk arrived during a stall and playback resumed.",
                            MakeTraceSourceAccessor(&VideoClient::m_stallEndTrace),
                            "ns3::VideoClient::StallEndTracedCallback");
    return tid;
}

VideoClient::VideoClient()
    : m_useEct0(false),
      m_bufferCap(Seconds(60)),
      m_waitStep(MilliSeconds(500)),
      m_startQuality(1),
      m_nChunks(0),
      m_state(STARTUP),
      m_rebufferCount(0),
      m_nextChunk(0),
      m_quality(1),
      m_inFlight(false),
      m_decisionPending(false),
      m_expectedBytes(0),
      m_rxBytes(0)
{
    NS_LOG_FUNCTION(this);
}

VideoClient::~VideoClient() = default;

void
VideoClient::SetManifest(std::vector<double> bitratesBps,
                         std::vector<uint64_t> chunkBytes,
                         uint32_t nChunks,
                         double chunkDurationS)
{
    NS_ABORT_MSG_IF(bitratesBps.empty() || nChunks == 0, "VideoClient: empty manifest");
    NS_ABORT_MSG_IF(chunkBytes.size() != bitratesBps.size() * nChunks,
                    "VideoClient: " << chunkBytes.size() << " chunk sizes for " << bitratesBps.size()
                                    << " levels x " << nChunks << " chunks");
    NS_ABORT_MSG_IF(chunkDurationS <= 0, "VideoClient: chunk duration must be positive");
    m_bitratesBps = std::move(bitratesBps);
    m_chunkBytes = std::move(chunkBytes);
    m_nChunks = nChunks;
    m_chunkDuration = Seconds(chunkDurationS);
}

void
VideoClient::SetDecisionHook(std::function<uint32_t()> hook)
{
    m_decide = std::move(hook);
}

bool
VideoClient::SubmitDecision(uint32_t quality)
{
    NS_LOG_FUNCTION(this << quality);
    if (!m_decisionPending)
    {
        return false;
    }
    NS_ABORT_MSG_IF(quality >= m_bitratesBps.size(),
                    "VideoClient: the submitted decision chose quality " << quality << " of "
                                                                         << m_bitratesBps.size());
    m_decisionPending = false;
    m_quality = quality;
    SendRequest();
    return true;
}

bool
VideoClient::IsDecisionPending() const
{
    return m_decisionPending;
}

uint32_t
VideoClient::GetNextChunk() const
{
    return m_nextChunk;
}

uint32_t
VideoClient::GetChunksTotal() const
{
    return m_nChunks;
}

uint32_t
VideoClient::GetLastQuality() const
{
    return m_quality;
}

Time
VideoClient::GetBufferLevel() const
{
    return BufferAt(Simulator::Now());
}

bool
VideoClient::IsFinished() const
{
    return m_nChunks > 0 && m_nextChunk == m_nChunks;
}

Time
VideoClient::GetStartupDelay() const
{
    return m_startupDelay;
}

uint32_t
VideoClient::GetRebufferCount() const
{
    bool ongoing = m_state == STALLED && Simulator::Now() > m_stallStart;
    return m_rebufferCount + (ongoing ? 1 : 0);
}

Time
VideoClient::GetRebufferTime() const
{
    return m_rebufferTime + (m_state == STALLED ? Simulator::Now() - m_stallStart : Time(0));
}

void
VideoClient::DoDispose()
{
    NS_LOG_FUNCTION(this);
    m_socket = nullptr;
    m_decide = nullptr;
    Application::DoDispose();
}

Time
VideoClient::BufferAt(Time now) const
{
    if (m_state != PLAYING)
    {
        return m_buffer;
    }
    return Max(m_buffer - (now - m_bufferStamp), Time(0));
}

void
VideoClient::StartApplication()
{
    NS_LOG_FUNCTION(this);
    NS_ABORT_MSG_IF(m_nChunks == 0, "VideoClient: SetManifest before the application starts");
    NS_ABORT_MSG_IF(m_startQuality >= m_bitratesBps.size(),
                    "VideoClient: StartQuality " << m_startQuality << " but only " << m_bitratesBps.size()
                                                 << " levels");
    Ptr<TcpL4Protocol> tcp = GetNode()->GetObject<TcpL4Protocol>();
    NS_ABORT_MSG_IF(!tcp, "VideoClient needs an internet stack on its node");
    m_startTime = Simulator::Now();
    m_state = STARTUP;
    m_buffer = Time(0);
    m_bufferStamp = m_startTime;
    m_quality = m_startQuality;
    m_socket = tcp->CreateSocket(m_congestionControl);
    ConfigureTcpTransport(m_socket, m_congestionControl, false, m_useEct0);
    m_socket->Bind();
    m_socket->Connect(m_remote);
    m_socket->SetConnectCallback(MakeCallback(&VideoClient::ConnectionSucceeded, this),
                                 MakeCallback(&VideoClient::ConnectionFailed, this));
    m_socket->SetRecvCallback(MakeCallback(&VideoClient::HandleRead, this));
}

void
VideoClient::StopApplication()
{
    NS_LOG_FUNCTION(this);
    m_requestEvent.Cancel();
    m_emptyEvent.Cancel();
    m_decisionPending = false;
    if (m_socket)
    {
        m_socket->Close();
    }
}

void
VideoClient::ConnectionSucceeded(Ptr<Socket> socket)
{
    NS_LOG_FUNCTION(this << socket);
    RequestNext();
}

void
VideoClient::ConnectionFailed(Ptr<Socket> socket)
{
    NS_LOG_WARN("VideoClient: connection to the server failed");
}

void
VideoClient::RequestNext()
{
    if (m_nextChunk > 0 && m_decide)
    {
        uint32_t quality = m_decide();
        if (quality == DECISION_PENDING)
        {
            NS_LOG_INFO("chunk " << m_nextChunk << " waits for its decision");
            m_decisionPending = true;
            return;
        }
        NS_ABORT_MSG_IF(quality >= m_bitratesBps.size(),
                        "VideoClient: the decision hook chose quality " << quality << " of "
                                                                        << m_bitratesBps.size());
        m_quality = quality;
    }
    SendRequest();
}

void
VideoClient::SendRequest()
{
    Time now = Simulator::Now();
    m_expectedBytes = m_chunkBytes[static_cast<size_t>(m_quality) * m_nChunks + m_nextChunk];
    m_rxBytes = 0;
    m_requestTime = now;
    m_requestBuffer = BufferAt(now);
    m_inFlight = true;
    NS_LOG_INFO("request chunk " << m_nextChunk << " quality " << m_quality << " buffer "
                                 << m_requestBuffer.As(Time::S));
    Ptr<Packet> request = VideoServer::SerializeRequest({m_nextChunk, m_quality, m_expectedBytes});
    NS_ABORT_MSG_IF(m_socket->Send(request) != static_cast<int>(VideoServer::REQUEST_SIZE),
                    "VideoClient: the socket refused a request");
}

void
VideoClient::HandleRead(Ptr<Socket> socket)
{
    Ptr<Packet> packet;
    while ((packet = socket->Recv()) && packet->GetSize() > 0)
    {
        NS_ABORT_MSG_IF(!m_inFlight, "VideoClient: data arrived with no request outstanding");
        if (m_rxBytes == 0)
        {
            m_firstByteTime = Simulator::Now();
        }
        m_rxBytes += packet->GetSize();
        if (m_rxBytes >= m_expectedBytes)
        {
            CompleteChunk();
        }
    }
}

void
VideoClient::CompleteChunk()
{
    Time now = Simulator::Now();
    Time buffer = BufferAt(now);
    Time rebuffer(0);
    if (m_state == STARTUP)
    {
        rebuffer = now - m_startTime;
        m_startupDelay = rebuffer;
    }
    else if (m_state == STALLED)
    {
        rebuffer = now - m_stallStart;
        m_rebufferTime += rebuffer;
        if (rebuffer.IsStrictlyPositive())
        {
            ++m_rebufferCount;
        }
        m_stallEndTrace(m_nextChunk, rebuffer);
    }
    m_inFlight = false;
    m_state = PLAYING;
    m_buffer = buffer + m_chunkDuration;
    m_bufferStamp = now;
    m_emptyEvent.Cancel();
    m_emptyEvent = Simulator::Schedule(m_buffer, &VideoClient::BufferEmpty, this);

    chunkIndex.push_back(m_nextChunk);
    chunkQuality.push_back(m_quality);
    chunkBitrateBps.push_back(m_bitratesBps[m_quality]);
    chunkBytes.push_back(m_expectedBytes);
    chunkRxBytes.push_back(m_rxBytes);
    requestTime.push_back(m_requestTime.GetSeconds());
    firstByteTime.push_back(m_firstByteTime.GetSeconds());
    lastByteTime.push_back(now.GetSeconds());
    bufferBefore.push_back(m_requestBuffer.GetSeconds());
    bufferAfter.push_back(m_buffer.GetSeconds());
    rebufferTime.push_back(rebuffer.GetSeconds());
    waitTime.push_back(m_wait.GetSeconds());
    m_chunkTrace(m_nextChunk, m_quality, m_expectedBytes, now - m_requestTime);

    ++m_nextChunk;
    if (m_nextChunk == m_nChunks)
    {
        NS_LOG_INFO("last chunk arrived at " << now.As(Time::S));
        m_socket->Close();
        return;
    }
    m_wait = Time(0);
    if (m_buffer > m_bufferCap)
    {
        int64_t step = m_waitStep.GetTimeStep();
        int64_t steps = ((m_buffer - m_bufferCap).GetTimeStep() + step - 1) / step;
        m_wait = TimeStep(steps * step);
        m_requestEvent = Simulator::Schedule(m_wait, &VideoClient::RequestNext, this);
        return;
    }
    RequestNext();
}

void
VideoClient::BufferEmpty()
{
    Time now = Simulator::Now();
    m_buffer = Time(0);
    m_bufferStamp = now;
    if (IsFinished())
    {
        m_state = ENDED;
        return;
    }
    NS_LOG_INFO("stall waiting for chunk " << m_nextChunk << " at " << now.As(Time::S));
    m_state = STALLED;
    m_stallStart = now;
    m_stallStartTrace(m_nextChunk);
}

} // namespace ns3
