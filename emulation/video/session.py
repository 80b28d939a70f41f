"""Packet-level video sessions: a VideoServer and a VideoClient per configured client.

The C++ client owns everything that happens per packet or in continuous time
(requests, byte counting, buffer draining, stalls); Python runs once per chunk,
when the client asks its ABR for the next quality. That decision is a plain
``Callable[[AbrObservation], int]``, so a classic policy, an agent over the
wire or a test stub plug in the same way. The observation is built by
:meth:`VideoManifest.abr_observation`, as the chunk-level simulator builds it.
A decision may also answer a :class:`Deferred` (an agent with a decision
delay): the request then leaves only when the quality takes effect, that much
simulated time later, while the buffer keeps draining.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from agents.protocol.control_points import AbrObservation
from agents.protocol.qoe import QoeSummary, qoe_lin_terms
from emulation.config import CC_TYPE_IDS, VideoClientConfig
from emulation.decision_delay import Deferred
from emulation.probes import vector_to_numpy
from emulation.video.manifest import VideoManifest, default_manifest, load_manifest

#: TCP port of every video server (each server has a node of its own).
VIDEO_PORT = 8080

#: video.parquet columns, in order (docs/run-directory.md).
VIDEO_COLUMNS = [
    "client",
    "chunk",
    "quality",
    "bitrate_bps",
    "chunk_bytes",
    "request_s",
    "first_byte_s",
    "last_byte_s",
    "download_s",
    "throughput_bps",
    "buffer_before_s",
    "buffer_after_s",
    "rebuffer_s",
    "wait_s",
    "qoe_bitrate_mbps",
    "qoe_rebuffer_penalty",
    "qoe_smoothness_penalty",
    "qoe_lin",
]

Decide = Callable[[AbrObservation], int | Deferred]


def manifest_for_config(client: VideoClientConfig) -> VideoManifest:
    """The client's video: its ``manifest`` directory or the shipped video1, cut to ``n_chunks``."""
    manifest = load_manifest(client.manifest) if client.manifest else default_manifest()
    if client.n_chunks is None:
        return manifest
    if client.n_chunks > manifest.n_chunks:
        raise ValueError(
            f"video client '{client.name}': n_chunks {client.n_chunks} but {manifest.name} has {manifest.n_chunks}"
        )
    return VideoManifest(
        manifest.bitrates_bps, manifest.chunk_duration_s, manifest.chunk_bytes[:, : client.n_chunks], manifest.name
    )


def check_quality(who: str, quality: object, n_levels: int, chunk: int) -> int:
    """``quality`` as an int index, or a ValueError naming ``who`` decided (a client, a policy) and the chunk.

    Both simulators (packet level here, chunk level in ``testbed.chunksim``) check every decision with it.
    """
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 0 <= quality < n_levels:
        raise ValueError(
            f"{who}: the decision for chunk {chunk} returned {quality!r}; "
            f"need an int quality index in [0, {n_levels})"
        )
    return int(quality)


@dataclass
class _Session:
    """One client's objects and the per-chunk history its observations are built from."""

    config: VideoClientConfig
    manifest: VideoManifest
    decide: Decide
    server: object = None
    client: object = None
    hook: Callable[[], int] | None = None
    #: sends the request of a deferred decision when it takes effect (scheduled in simulated time)
    submit: Callable[[], None] | None = None
    deferred: Deferred | None = None
    throughputs_bps: list[float] = field(default_factory=list)
    download_times_s: list[float] = field(default_factory=list)


class VideoComponent:
    """Component: video clients streaming over the dumbbell, one endpoint pair each.

    ``decide`` maps client names to decision functions; a client without one
    uses the ABR its config names (``abr``). ``manifest_for`` gives each
    client's video. ``last_observation[name]`` is the observation of the
    client's latest decision; ``clients[name]`` and ``servers[name]`` are its
    C++ applications (records and totals).
    """

    def __init__(
        self,
        clients: list[VideoClientConfig],
        decide: Mapping[str, Decide] | None = None,
        manifest_for: Callable[[VideoClientConfig], VideoManifest] = manifest_for_config,
        policy_factory: Callable[[str], object] | None = None,
    ) -> None:
        self.configs = [c for config in clients for c in config.expanded()]
        names = [c.name for c in self.configs]
        decide = dict(decide or {})
        unknown = sorted(set(decide) - set(names))
        if unknown:
            raise ValueError(f"decide names unknown video clients {unknown}; clients: {names}")
        self._decide = decide
        self._manifest_for = manifest_for
        # Builds the in-process ABR a client's config names; the caller (testbed) owns the policy
        # registry, since emulation must not import agents beyond the wire protocol.
        self._policy_factory = policy_factory
        self._sessions: dict[str, _Session] = {}
        self._sim = None
        self.clients: dict[str, object] = {}
        self.servers: dict[str, object] = {}
        self.last_observation: dict[str, AbrObservation] = {}

    def attach(self, sim) -> None:
        self._sim = sim
        net = sim.net
        pair_of = {c.name: j for j, c in enumerate(sim.config.all_video())}
        for config in self.configs:
            if config.name not in pair_of:
                raise ValueError(
                    f"video client '{config.name}' is not in the simulation config's video list, "
                    "so the topology has no endpoint pair for it"
                )
            manifest = self._manifest_for(config)
            if config.start_quality >= manifest.n_levels:
                raise ValueError(
                    f"video client '{config.name}': start_quality {config.start_quality} but {manifest.name} "
                    f"has {manifest.n_levels} levels"
                )
            decide = self._decide[config.name] if config.name in self._decide else self._policy_decide(config)
            session = _Session(config, manifest, decide)
            self._install(sim, net.video_pair(pair_of[config.name]), session)
            self._sessions[config.name] = session
            self.clients[config.name] = session.client
            self.servers[config.name] = session.server

    def _policy_decide(self, config: VideoClientConfig) -> Decide:
        if self._policy_factory is None:
            raise ValueError(f"video client '{config.name}' has no decide function and no policy_factory was given")
        policy = self._policy_factory(config.abr)
        policy.reset()
        return policy.act

    def _install(self, sim, pair: int, session: _Session) -> None:
        ns, net = sim.ns, sim.net
        config, manifest = session.config, session.manifest
        cc = ns.TypeIdValue(ns.TypeId.LookupByName(CC_TYPE_IDS[config.congestion_control]))
        server = ns.CreateObject[ns.VideoServer]()
        server.SetAttribute("Port", ns.UintegerValue(VIDEO_PORT))
        server.SetAttribute("CongestionControl", cc)
        net.senders[pair].AddApplication(server)
        server.SetStartTime(ns.Seconds(0.0))

        client = ns.CreateObject[ns.VideoClient]()
        remote = ns.InetSocketAddress(net.sender_addresses[pair], VIDEO_PORT).ConvertTo()
        client.SetAttribute("Remote", ns.AddressValue(remote))
        client.SetAttribute("CongestionControl", cc)
        client.SetAttribute("BufferCap", ns.TimeValue(ns.Seconds(config.buffer_cap_s)))
        client.SetAttribute("StartQuality", ns.UintegerValue(config.start_quality))
        client.SetManifest(
            manifest.bitrates_bps.tolist(),
            manifest.chunk_bytes.ravel().tolist(),
            manifest.n_chunks,
            manifest.chunk_duration_s,
        )
        session.server, session.client = server, client
        # Kept on the session: the C++ side holds only a reference to this callable. Once the run is
        # stopping (a failed decision included) the guard answers quality 0, always valid, and the run ends.
        session.hook = sim.guard(lambda: self._decide_next(session), fallback=0)
        session.submit = lambda: self._submit(session)
        client.SetDecisionHook(session.hook)
        net.receivers[pair].AddApplication(client)
        client.SetStartTime(ns.Seconds(config.start_s))

    def observe(self, name: str) -> AbrObservation:
        """What client ``name`` knows now, as its ABR sees it before the next request."""
        session = self._sessions[name]
        client = session.client
        done = client.chunkIndex.size()
        for k in range(len(session.download_times_s), done):
            download_s = client.lastByteTime[k] - client.requestTime[k]
            session.download_times_s.append(download_s)
            session.throughputs_bps.append(client.chunkBytes[k] * 8.0 / download_s)
        last_rebuffer_s = client.rebufferTime[done - 1] if done else 0.0
        return session.manifest.abr_observation(
            client.GetNextChunk(),
            client.GetLastQuality(),
            client.GetBufferLevel().GetSeconds(),
            last_rebuffer_s,
            session.throughputs_bps,
            session.download_times_s,
        )

    def _decide_next(self, session: _Session) -> int:
        name = session.config.name
        obs = self.observe(name)
        self.last_observation[name] = obs
        choice = session.decide(obs)
        if isinstance(choice, Deferred):
            session.deferred = choice
            self._sim.schedule(choice.delay_s, session.submit)
            return int(session.client.DECISION_PENDING)
        return check_quality(f"video client '{name}'", choice, session.manifest.n_levels, obs.chunk_index)

    def _submit(self, session: _Session) -> None:
        """A deferred decision takes effect: the waiting request leaves with its quality."""
        quality = check_quality(f"video client '{session.config.name}'", session.deferred.collect(),
                                session.manifest.n_levels, session.client.GetNextChunk())
        session.deferred = None
        session.client.SubmitDecision(quality)

    def finish(self, sim) -> None:
        add_video_results(sim, {name: (_client_table(name, s.client), s.manifest) for name, s in self._sessions.items()})


def add_video_results(sim, clients: Mapping[str, tuple[pd.DataFrame, VideoManifest]]) -> None:
    """Add clients' chunk tables and summaries to the run's (other components may add theirs too)."""
    frames = [frame for frame, _ in clients.values()]
    if frames:
        earlier = [sim.tables["video"]] if "video" in sim.tables else []
        sim.tables["video"] = pd.concat([*earlier, *frames], ignore_index=True)
    summaries = sim.summary_extra.setdefault("video", {})
    for name, (frame, manifest) in clients.items():
        summaries[name] = video_summary(frame, manifest)


def chunk_table(name: str, chunks: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """video.parquet rows of one client from its per-chunk columns; QoE_lin's first chunk pays no smoothness penalty.

    ``chunks`` holds ``chunk``, ``quality``, ``bitrate_bps``, ``chunk_bytes``, ``request_s``,
    ``first_byte_s``, ``last_byte_s``, ``buffer_before_s``, ``buffer_after_s``, ``rebuffer_s``, ``wait_s``.
    """
    if len(chunks["chunk"]) == 0:
        return pd.DataFrame(columns=VIDEO_COLUMNS)
    bitrate_bps = np.asarray(chunks["bitrate_bps"], dtype=np.float64)
    chunk_bytes = np.asarray(chunks["chunk_bytes"], dtype=np.int64)
    request_s = np.asarray(chunks["request_s"], dtype=np.float64)
    last_byte_s = np.asarray(chunks["last_byte_s"], dtype=np.float64)
    rebuffer_s = np.asarray(chunks["rebuffer_s"], dtype=np.float64)
    download_s = last_byte_s - request_s
    terms = qoe_lin_terms(bitrate_bps, rebuffer_s)
    return pd.DataFrame(
        {
            "client": name,
            "chunk": np.asarray(chunks["chunk"], dtype=np.int64),
            "quality": np.asarray(chunks["quality"], dtype=np.int64),
            "bitrate_bps": bitrate_bps,
            "chunk_bytes": chunk_bytes,
            "request_s": request_s,
            "first_byte_s": np.asarray(chunks["first_byte_s"], dtype=np.float64),
            "last_byte_s": last_byte_s,
            "download_s": download_s,
            "throughput_bps": chunk_bytes * 8.0 / download_s,
            "buffer_before_s": np.asarray(chunks["buffer_before_s"], dtype=np.float64),
            "buffer_after_s": np.asarray(chunks["buffer_after_s"], dtype=np.float64),
            "rebuffer_s": rebuffer_s,
            "wait_s": np.asarray(chunks["wait_s"], dtype=np.float64),
            "qoe_bitrate_mbps": terms.bitrate,
            "qoe_rebuffer_penalty": terms.rebuffer_penalty,
            "qoe_smoothness_penalty": terms.smoothness_penalty,
            "qoe_lin": terms.total,
        },
        columns=VIDEO_COLUMNS,
    )


def _client_table(name: str, client) -> pd.DataFrame:
    """A packet-level VideoClient's records as video.parquet rows."""
    return chunk_table(name, {
        "chunk": vector_to_numpy(client.chunkIndex, np.uint32),
        "quality": vector_to_numpy(client.chunkQuality, np.uint32),
        "bitrate_bps": vector_to_numpy(client.chunkBitrateBps, np.float64),
        "chunk_bytes": vector_to_numpy(client.chunkBytes, np.uint64),
        "request_s": vector_to_numpy(client.requestTime, np.float64),
        "first_byte_s": vector_to_numpy(client.firstByteTime, np.float64),
        "last_byte_s": vector_to_numpy(client.lastByteTime, np.float64),
        "buffer_before_s": vector_to_numpy(client.bufferBefore, np.float64),
        "buffer_after_s": vector_to_numpy(client.bufferAfter, np.float64),
        "rebuffer_s": vector_to_numpy(client.rebufferTime, np.float64),
        "wait_s": vector_to_numpy(client.waitTime, np.float64),
    })


def video_summary(frame: pd.DataFrame, manifest: VideoManifest) -> dict:
    """summary.json's ``video.<client>``: QoE_lin, bitrate, rebuffering, switches, startup delay."""
    played = len(frame)
    summary: dict = {"chunks_played": played, "chunks_total": manifest.n_chunks}
    if played:
        qoe = QoeSummary.from_chunks(frame["bitrate_bps"], frame["rebuffer_s"], manifest.chunk_duration_s)
        summary.update(
            qoe_lin_mean=qoe.qoe_lin_mean,
            qoe_lin_mean_after_first=qoe.qoe_lin_mean_after_first,
            avg_bitrate_bps=qoe.avg_bitrate_bps,
            rebuffer_s=qoe.rebuffer_s,
            rebuffer_ratio=qoe.rebuffer_ratio,
            rebuffer_count=qoe.rebuffer_count,
            switches=qoe.switches,
            startup_delay_s=qoe.startup_delay_s,
        )
    return summary
