/*
 * The client side of a packet-level video session: chunk requests over one
 * persistent TCP connection, a playback buffer in simulated time, and an
 * ABR decision hook at every chunk boundary.
 *
 * Playback model (the chunk-level reference simulator's, in continuous time):
 * startup lasts until the first chunk arrives; then the buffer drains one
 * second per second; when it empties a stall starts, and the next arrival
 * ends it. The empty moment is an event, so stall start and duration are
 * exact, not sampled at chunk boundaries. After a chunk arrives, if the buffer
 * is above BufferCap the next request waits a whole number of WaitSteps until
 * it is back under the cap.
 */
#ifndef VIDEO_CLIENT_H
#define VIDEO_CLIENT_H

#include "ns3/address.h"
#include "ns3/application.h"
#include "ns3/event-id.h"
#include "ns3/nstime.h"
#include "ns3/socket.h"
#include "ns3/traced-callback.h"

#include <functional>
#include <vector>

namespace ns3
{

/**
 * @ingroup applications
 * Streams a video from a VideoServer, one chunk at a time, and records every chunk.
 *
 * The first chunk is fetched at StartQuality without asking the hook (as the
 * Pensieve simulator does); each later quality comes from the decision hook,
 * or stays at StartQuality when none is set. The hook runs just before the
 * request, after any full-buffer wait, and reads the client through the getters.
 * A hook may answer DECISION_PENDING instead of a quality: the request then
 * waits (the buffer keeps draining) until SubmitDecision brings the quality,
 * which is how a decision takes effect some simulated time after its state.
 */
class VideoClient : public Application
{
  public:
    static TypeId GetTypeId();
    VideoClient();
    ~VideoClient() override;

    /**
     * The video to play.
     * @param bitratesBps nominal bitrate of each quality level, ascending (bit/s)
     * @param chunkBytes chunk sizes [levels x nChunks], row-major by level (bytes)
     * @param nChunks number of chunks
     * @param chunkDurationS playback duration of one chunk (s)
     */
    void SetManifest(std::vector<double> bitratesBps,
                     std::vector<uint64_t> chunkBytes,
                     uint32_t nChunks,
                     double chunkDurationS);

    /** A decision hook's answer meaning "later": the request waits for SubmitDecision. */
    static constexpr uint32_t DECISION_PENDING = 0xFFFFFFFF;

    /** Set the ABR: called before each request after the first, returns the quality index. */
    void SetDecisionHook(std::function<uint32_t()> hook);

    /**
     * Send the request that waits for a decision (the hook answered DECISION_PENDING).
     * @param quality quality index of the next chunk
     * @return false, doing nothing, when no request waits (the application stopped)
     */
    bool SubmitDecision(uint32_t quality);
    /** Whether a request waits for SubmitDecision. */
    bool IsDecisionPending() const;

    /** Index of the chunk requested next (the one being decided inside the hook). */
    uint32_t GetNextChunk() const;
    uint32_t GetChunksTotal() const;
    /** Quality of the last requested chunk (StartQuality before any). */
    uint32_t GetLastQuality() const;
    /** Seconds of video in the playback buffer now. */
    Time GetBufferLevel() const;
    /** Whether the last chunk has arrived. */
    bool IsFinished() const;
    /** Time from the start to the first chunk's arrival (zero before it). */
    Time GetStartupDelay() const;
    /** Stalls after startup (an ongoing one included). */
    uint32_t GetRebufferCount() const;
    /** Stall time after startup, an ongoing stall counted up to now. */
    Time GetRebufferTime() const;

    // Per-chunk records, one entry per arrived chunk, in order. Times in s (simulated).
    std::vector<uint32_t> chunkIndex;      //!< chunk index
    std::vector<uint32_t> chunkQuality;    //!< quality level
    std::vector<double> chunkBitrateBps;   //!< nominal bitrate of that level (bit/s)
    std::vector<uint64_t> chunkBytes;      //!< manifest size (bytes)
    std::vector<uint64_t> chunkRxBytes;    //!< bytes received for it (bytes)
    std::vector<double> requestTime;       //!< request sent (s)
    std::vector<double> firstByteTime;     //!< first byte received (s)
    std::vector<double> lastByteTime;      //!< last byte received (s)
    std::vector<double> bufferBefore;      //!< buffer when the request left (s)
    std::vector<double> bufferAfter;       //!< buffer after the chunk was added (s)
    std::vector<double> rebufferTime;      //!< stall while it was fetched; chunk 0: startup delay (s)
    std::vector<double> waitTime;          //!< full-buffer wait before its request (s)

    /**
     * TracedCallback signature of a completed chunk.
     * @param [in] chunk chunk index
     * @param [in] quality quality level
     * @param [in] bytes chunk size
     * @param [in] download time from request to last byte
     */
    typedef void (*ChunkTracedCallback)(uint32_t chunk, uint32_t quality, uint64_t bytes, Time download);
    /**
     * TracedCallback signature of a stall start.
     * @param [in] chunk the chunk playback waits for
     */
    typedef void (*StallStartTracedCallback)(uint32_t chunk);
    /**
     * TracedCallback signature of a stall end.
     * @param [in] chunk the chunk whose arrival ended the stall
     * @param [in] duration length of the stall
     */
    typedef void (*StallEndTracedCallback)(uint32_t chunk, Time duration);

  protected:
    void DoDispose() override;

  private:
    /** Playback state. */
    enum PlayState
    {
        STARTUP, //!< before the first chunk
        PLAYING, //!< buffer draining
        STALLED, //!< buffer empty, waiting for a chunk
        ENDED    //!< last chunk played out
    };

    void StartApplication() override;
    void StopApplication() override;
    void ConnectionSucceeded(Ptr<Socket> socket);
    void ConnectionFailed(Ptr<Socket> socket);
    void HandleRead(Ptr<Socket> socket);
    /** Decide the quality of the next chunk and send its request (or wait for the decision). */
    void RequestNext();
    /** Send the next chunk's request at m_quality. */
    void SendRequest();
    /** The current chunk's last byte arrived: account playback, record, schedule the next request. */
    void CompleteChunk();
    /** The buffer ran dry. */
    void BufferEmpty();
    /** Buffer level at @p now given the playback state. */
    Time BufferAt(Time now) const;

    Address m_remote;
    TypeId m_congestionControl;
    bool m_useEct0;
    Time m_bufferCap;
    Time m_waitStep;
    uint32_t m_startQuality;

    std::vector<double> m_bitratesBps;
    std::vector<uint64_t> m_chunkBytes; //!< row-major [level][chunk]
    uint32_t m_nChunks;
    Time m_chunkDuration;
    std::function<uint32_t()> m_decide;

    Ptr<Socket> m_socket;
    EventId m_requestEvent;
    EventId m_emptyEvent;

    PlayState m_state;
    Time m_buffer;      //!< buffer level at m_bufferStamp
    Time m_bufferStamp; //!< when m_buffer was taken
    Time m_startTime;
    Time m_stallStart;
    Time m_startupDelay;
    Time m_rebufferTime; //!< finished stalls after startup
    uint32_t m_rebufferCount;

    // The chunk in flight.
    uint32_t m_nextChunk;
    uint32_t m_quality;
    bool m_inFlight;
    bool m_decisionPending; //!< the hook answered DECISION_PENDING; SubmitDecision sends the request
    uint64_t m_expectedBytes;
    uint64_t m_rxBytes;
    Time m_requestTime;
    Time m_firstByteTime;
    Time m_requestBuffer;
    Time m_wait; //!< wait before the next request

    TracedCallback<uint32_t, uint32_t, uint64_t, Time> m_chunkTrace;
    TracedCallback<uint32_t> m_stallStartTrace;
    TracedCallback<uint32_t, Time> m_stallEndTrace;
};

} // namespace ns3

#endif // VIDEO_CLIENT_H
