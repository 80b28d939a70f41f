/*
 * The server side of a packet-level video session.
 *
 * A client asks for one chunk at a time over a persistent TCP connection
 * with a fixed-size request (chunk index, quality, byte count); the server
 * answers each request with exactly that many bytes, in order, so the
 * client knows where a chunk ends without any framing in the data.
 */
#ifndef VIDEO_SERVER_H
#define VIDEO_SERVER_H

#include "ns3/application.h"
#include "ns3/packet.h"
#include "ns3/socket.h"
#include "ns3/traced-callback.h"

#include <deque>
#include <map>
#include <vector>

namespace ns3
{

/**
 * @ingroup applications
 * Serves video chunk requests on a TCP port, with a per-application
 * congestion control and ECN mode (TcpBulkSender's, for the data direction).
 */
class VideoServer : public Application
{
  public:
    /** One chunk request as it travels on the wire. */
    struct Request
    {
        uint32_t chunk;   //!< chunk index
        uint32_t quality; //!< quality level (0 = lowest bitrate)
        uint64_t bytes;   //!< bytes to send back
    };

    /** Size of a serialized Request in bytes (two uint32 and one uint64, network order). */
    static constexpr uint32_t REQUEST_SIZE = 16;

    static TypeId GetTypeId();
    VideoServer();
    ~VideoServer() override;

    /** The wire form of @p request (REQUEST_SIZE bytes). */
    static Ptr<Packet> SerializeRequest(const Request& request);
    /** Parse REQUEST_SIZE bytes at @p data. */
    static Request DeserializeRequest(const uint8_t* data);

    /** Requests whose last byte has been handed to TCP. */
    uint64_t GetRequestsServed() const;
    /** Bytes handed to TCP over all connections. */
    uint64_t GetTotalBytesSent() const;

    /**
     * TracedCallback signature of a served request.
     * @param [in] chunk chunk index
     * @param [in] quality quality level
     * @param [in] bytes bytes sent for it
     */
    typedef void (*RequestTracedCallback)(uint32_t chunk, uint32_t quality, uint64_t bytes);

  protected:
    void DoDispose() override;

  private:
    /** Per-connection state: unparsed request bytes and the requests not yet fully sent. */
    struct Connection
    {
        std::vector<uint8_t> pending;
        std::deque<Request> queue;
        uint64_t headSent = 0; //!< bytes of queue.front() already sent
    };

    void StartApplication() override;
    void StopApplication() override;
    void HandleAccept(Ptr<Socket> socket, const Address& from);
    void HandleRead(Ptr<Socket> socket);
    void HandleSend(Ptr<Socket> socket, uint32_t available);
    void HandleClose(Ptr<Socket> socket);
    /** Hand TCP as much of the queued answers of @p socket as it will take. */
    void SendQueued(Ptr<Socket> socket);

    uint16_t m_port;
    TypeId m_congestionControl;
    bool m_useEct0;
    Ptr<Socket> m_listener;
    std::map<Ptr<Socket>, Connection> m_connections;
    uint64_t m_requestsServed;
    uint64_t m_totalBytes;
    TracedCallback<uint32_t, uint32_t, uint64_t> m_servedTrace;
};

} // namespace ns3

#endif // VIDEO_SERVER_H
