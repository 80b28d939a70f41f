"""The simulation's configuration: what one run of the simulator builds.

The schema lives beside the simulator because the simulation process
validates exactly what it runs; ``testbed.scenario`` turns scenario files
(YAML) into these objects and reports errors with file and key.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

#: What a name may be made of: names become parts of paths (run directories, agent logs).
NAME_PATTERN = r"[A-Za-z0-9._-]+"


def check_name(value: str) -> str:
    """A scenario, flow or client name usable as one path part: ``[A-Za-z0-9._-]+``, not ``.`` or ``..``."""
    import re

    if not re.fullmatch(NAME_PATTERN, value) or set(value) == {"."}:
        raise ValueError(f"{value!r} is not a valid name: use letters, digits, '.', '_' and '-' "
                         f"(it becomes part of a path), and not '.' or '..'")
    return value


Name = Annotated[str, AfterValidator(check_name)]

QueueType = Literal["dualpi2", "pie", "fq_codel", "codel", "red", "fifo"]

#: ns-3 TypeId of each bottleneck queue disc.
QUEUE_TYPE_IDS: dict[str, str] = {
    "dualpi2": "ns3::DualPi2QueueDisc",
    "pie": "ns3::PieQueueDisc",
    "fq_codel": "ns3::FqCoDelQueueDisc",
    "codel": "ns3::CoDelQueueDisc",
    "red": "ns3::RedQueueDisc",
    "fifo": "ns3::FifoQueueDisc",
}

#: Congestion controls of L4S (ECT(1)) flows; the first is the default.
L4S_CCS = ("prague", "dctcp")

#: ns-3 TypeId of each TCP congestion control.
CC_TYPE_IDS: dict[str, str] = {
    "prague": "ns3::TcpPrague",  # TCP Prague, the L4S sender (RFC 9331 Appendix A)
    "dctcp": "ns3::TcpDctcpRfc8257",  # DCTCP with the RFC 8257 loss response
    "cubic": "ns3::TcpCubic",
    "newreno": "ns3::TcpNewReno",
    # Linux's names, for real hosts (emulation.mode real); simulated, they map to ns-3's models.
    "reno": "ns3::TcpNewReno",
    "bbr": "ns3::TcpBbr",
}

#: Congestion controls a real host runs in its kernel (``real: true`` flows in real mode).
KERNEL_CCS = ("cubic", "bbr", "reno")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueueConfig(_Strict):
    type: QueueType = "dualpi2"
    #: ns-3 attributes of the queue disc, as strings ns-3 parses ("15ms", "0.16", "true").
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)


class BottleneckConfig(_Strict):
    rate_mbps: float = Field(100.0, gt=0)
    #: one-way propagation delay of the bottleneck link
    delay_ms: float = Field(1.0, ge=0)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    #: bandwidth trace file the bottleneck rate follows (overrides rate_mbps while it lasts)
    trace: str | None = None
    #: multiply the trace's rates (e.g. to scale a 3G trace to a broadband link)
    trace_scale: float = Field(1.0, gt=0)
    #: packet capture of the bottleneck link (pcap, read by emulation.pcap_ecn)
    capture: bool = False


class FlowConfig(_Strict):
    name: Name
    #: l4s: Prague (default) or DCTCP marking ECT(1); classic: Cubic/NewReno, ECN optional; udp: constant bit rate
    kind: Literal["l4s", "classic", "udp"]
    cc: Literal["prague", "dctcp", "cubic", "newreno", "reno", "bbr"] | None = None
    #: TCP: negotiate ECN (ECT(0) data); a real udp flow: mark every packet ECT(1) through the IP TOS byte
    ecn: bool = False
    #: in real mode (emulation.mode: real) both ends are Linux hosts in namespaces of their own
    real: bool = False
    #: base round-trip time of the flow's path
    rtt_ms: float = Field(10.0, gt=0)
    start_s: float = Field(0.0, ge=0)
    stop_s: float | None = None
    #: replicate this flow N times (names get -1, -2, ...)
    count: int = Field(1, ge=1, le=256)
    #: UDP sending rate
    rate_mbps: float | None = Field(None, gt=0)
    #: stop after this many bytes (TCP); None = unlimited
    max_bytes: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_kind(self) -> FlowConfig:
        if self.kind == "l4s":
            if self.cc not in (None, *L4S_CCS):
                raise ValueError(f"flow '{self.name}': an l4s flow uses cc {' or '.join(L4S_CCS)}, not '{self.cc}'")
            self.cc = self.cc or L4S_CCS[0]
            self.ecn = True
        elif self.kind == "classic":
            if self.cc in L4S_CCS:
                raise ValueError(f"flow '{self.name}': a classic flow cannot use {self.cc} (use kind: l4s)")
            self.cc = self.cc or "cubic"
        else:
            if self.rate_mbps is None:
                raise ValueError(f"flow '{self.name}': a udp flow needs rate_mbps")
        if self.real and self.kind == "l4s":
            raise ValueError(f"flow '{self.name}': a real flow cannot be l4s: the kernel has no DCTCP or Prague here "
                             "(real L4S packets: kind udp with ecn: true)")
        if self.real and self.kind == "classic" and self.cc not in KERNEL_CCS:
            raise ValueError(f"flow '{self.name}': a real flow runs the kernel's {', '.join(KERNEL_CCS)}, not '{self.cc}'")
        if self.stop_s is not None and self.stop_s <= self.start_s:
            raise ValueError(f"flow '{self.name}': stop_s ({self.stop_s}) must be after start_s ({self.start_s})")
        return self

    def expanded(self) -> list[FlowConfig]:
        if self.count == 1:
            return [self]
        return [self.model_copy(update={"name": f"{self.name}-{i + 1}", "count": 1}) for i in range(self.count)]


class VideoClientConfig(_Strict):
    """A packet-level video client streaming from a server behind the bottleneck."""

    name: Name
    count: int = Field(1, ge=1, le=64)
    #: classic: Cubic (Not-ECT, C queue); l4s: ECT(1) (L queue) with ``cc``
    transport: Literal["classic", "l4s"] = "classic"
    #: congestion control of an l4s transport: prague (default) or dctcp
    cc: Literal["prague", "dctcp"] | None = None
    rtt_ms: float = Field(80.0, gt=0)
    start_s: float = Field(0.0, ge=0)
    #: directory of video_size_* files; None = the shipped video1
    manifest: str | None = None
    #: ABR used when no agent controls this client (bba, rate, mpc, bola)
    abr: str = "mpc"
    buffer_cap_s: float = Field(60.0, gt=0)
    start_quality: int = Field(1, ge=0)
    #: play only the first N chunks (None = the whole manifest)
    n_chunks: int | None = Field(None, ge=1)
    #: in real mode a real HTTP server and player (kernel Cubic), each in a namespace of its own
    real: bool = False

    @model_validator(mode="after")
    def _check_real(self) -> VideoClientConfig:
        if self.real and self.transport == "l4s":
            raise ValueError(f"video client '{self.name}': a real client uses kernel TCP (transport classic), not l4s")
        return self

    @model_validator(mode="after")
    def _check_cc(self) -> VideoClientConfig:
        if self.transport == "classic" and self.cc is not None:
            raise ValueError(f"video client '{self.name}': cc {self.cc} needs transport: l4s (classic video uses Cubic)")
        return self

    @property
    def congestion_control(self) -> str:
        """Key of CC_TYPE_IDS this client's sessions use."""
        return (self.cc or L4S_CCS[0]) if self.transport == "l4s" else "cubic"

    def expanded(self) -> list[VideoClientConfig]:
        if self.count == 1:
            return [self]
        return [self.model_copy(update={"name": f"{self.name}-{i + 1}", "count": 1}) for i in range(self.count)]


class AqmRewardWeights(_Strict):
    """Weights of the AQM reward (see emulation/control_points.py)."""

    utilisation: float = 1.0
    l_delay: float = 1.0
    c_delay: float = 0.5
    drops: float = 1.0
    l_target_s: float = Field(0.001, gt=0)
    c_target_s: float = Field(0.015, gt=0)


def check_decision_delay(value: object) -> str | float:
    """``none``, ``measured``, or a delay in ms (a finite number >= 0, also given as text: ``"12"``)."""
    if value in ("none", "measured"):
        return value
    ms = float("nan")
    if not isinstance(value, bool):
        try:
            ms = float(value)
        except (TypeError, ValueError):
            pass
    if not (math.isfinite(ms) and ms >= 0):
        raise ValueError(f"decision_delay must be none, measured or a delay in ms >= 0, got {value!r}")
    return ms


#: ``control.<point>.decision_delay``: ``none`` (the action takes effect at its state's instant), a fixed
#: delay in ms of simulated time, or ``measured`` (each decision's own wall-clock round trip).
DecisionDelay = Annotated[Literal["none", "measured"] | float, BeforeValidator(check_decision_delay)]


class _AgentEndpoint(_Strict):
    """Where the simulation finds a control point's agent, how long it waits for it, and when its
    actions take effect."""

    host: str = "127.0.0.1"
    port: int = Field(5555, ge=1, le=65535)
    #: longest wait for each answer during the run
    timeout_s: float = Field(30.0, gt=0)
    #: longest wait for the agent's first answer (SimInitAck): covers the agent's start-up (an LLM loading)
    connect_timeout_s: float = Field(120.0, gt=0)
    #: the agent is started by someone else at host:port (``testbed run`` starts none for it)
    external: bool = False
    #: the agent listens on a Unix socket, ipc://<ipc> (``@NAME``: Linux's abstract namespace), instead of
    #: host:port: the testbed's choice for the agents it starts on this machine
    ipc: str | None = None
    #: simulated time between a state and its action taking effect (emulation/decision_delay.py)
    decision_delay: DecisionDelay = "none"


class AqmControlConfig(_AgentEndpoint):
    """The DualPI2 p' served by an agent over the ns3-gym protocol."""
    #: box: p' in [0, 1] (float64); discrete: index into aqm_action_grid(n_actions)
    action: Literal["box", "discrete"] = "box"
    n_actions: int = Field(17, ge=2, le=1024)
    #: ask the agent every k-th Tupdate tick; p' holds in between
    every_k: int = Field(1, ge=1)
    reward: AqmRewardWeights = Field(default_factory=AqmRewardWeights)


class AbrControlConfig(_AgentEndpoint):
    """Video clients' quality choices served by agents: client i uses port + i (or ipc ``<ipc>-i``), or, with
    ``one_endpoint``, every client the same port: a policy server that tells clients apart by their connection's
    identity."""

    port: int = Field(5600, ge=1, le=65535)
    one_endpoint: bool = False


class ControlConfig(_Strict):
    aqm: AqmControlConfig | None = None
    abr: AbrControlConfig | None = None


class ProbeConfig(_Strict):
    #: queue and flow sampling interval
    interval_ms: float = Field(10.0, gt=0)
    #: start of the measurement window (warm-up excluded from the summary)
    warmup_s: float = Field(2.0, ge=0)


class EmulationConfig(_Strict):
    """How the network runs: fully simulated, or in real time with real hosts attached."""

    #: sim: as fast as the CPU allows, every endpoint simulated; real: in real time, endpoints
    #: marked ``real`` are Linux network namespaces attached through TAPs (docs/real-mode.md)
    mode: Literal["sim", "real"] = "sim"
    #: real mode: the run stops with an error once the simulator falls this far behind the wall clock
    hard_limit_ms: float = Field(100.0, ge=1)
    #: real mode: write a pcap (headers only) of every real host's TAP
    capture: bool = True
    #: real mode: SCHED_FIFO priority of the simulator and its hosts (1-99), so other load on the
    #: machine cannot delay them; 0 leaves them to the normal scheduler
    realtime_priority: int = Field(10, ge=0, le=99)


class SimulationConfig(_Strict):
    """Everything one simulation run needs, fully resolved."""

    name: Name
    description: str = ""
    seed: int = Field(1, ge=1)
    duration_s: float = Field(20.0, gt=0)
    bottleneck: BottleneckConfig = Field(default_factory=BottleneckConfig)
    flows: list[FlowConfig] = Field(default_factory=list)
    video: list[VideoClientConfig] = Field(default_factory=list)
    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    #: control points served over the wire (absent: in-queue PI2, in-process ABR)
    control: ControlConfig = Field(default_factory=ControlConfig)
    #: TCP segment size in bytes
    segment_size_bytes: int = Field(1448, ge=536, le=8960)
    emulation: EmulationConfig = Field(default_factory=EmulationConfig)

    @model_validator(mode="after")
    def _check(self) -> SimulationConfig:
        if not self.flows and not self.video:
            raise ValueError("the scenario has no traffic: give at least one entry under flows: or video:")
        names = [f.name for f in self.all_flows()] + [v.name for v in self.all_video()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"flow and video client names must be unique, repeated: {', '.join(dupes)}")
        if self.probes.warmup_s >= self.duration_s:
            raise ValueError(
                f"probes.warmup_s ({self.probes.warmup_s}) must be shorter than duration_s ({self.duration_s})"
            )
        for flow in self.flows:
            if flow.kind == "udp" and flow.ecn and not self.is_real(flow):
                raise ValueError(f"flow '{flow.name}': ecn on a udp flow (ECT(1) through the IP TOS byte) exists only "
                                 "on real hosts: real: true with emulation.mode: real")
        for point_name, point in (("aqm", self.control.aqm), ("abr", self.control.abr)):
            if self.real_mode and point is not None and point.decision_delay != "none":
                raise ValueError(f"control.{point_name}.decision_delay is {point.decision_delay!r}, but delays in "
                                 "simulated time do not apply in real mode (emulation.mode: real), where simulated "
                                 "time is the wall clock's: use none")
        for flow in [*self.flows, *self.video]:
            if flow.rtt_ms / 2 < self.bottleneck.delay_ms:
                raise ValueError(
                    f"flow '{flow.name}': rtt_ms {flow.rtt_ms} is shorter than twice the bottleneck delay "
                    f"({self.bottleneck.delay_ms} ms one way)"
                )
        return self

    def all_flows(self) -> list[FlowConfig]:
        return [f for flow in self.flows for f in flow.expanded()]

    def all_video(self) -> list[VideoClientConfig]:
        return [v for video in self.video for v in video.expanded()]

    @property
    def real_mode(self) -> bool:
        return self.emulation.mode == "real"

    def is_real(self, endpoint: FlowConfig | VideoClientConfig) -> bool:
        """Whether ``endpoint`` runs on real hosts in this run (marked real, and the run is in real mode)."""
        return self.real_mode and endpoint.real
