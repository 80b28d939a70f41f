"""Dumbbell topology: one sender and one receiver node per flow, two routers,
and the bottleneck between them.

Per-flow nodes let each flow keep its own TCP congestion control on both
ends (a Prague or DCTCP receiver must run their ECE logic) and its own base RTT,
set on the sender's access link. The bottleneck queue disc is installed
before addresses are assigned (or ns-3 puts FqCoDel there) and the device
queue holds one packet, so the backlog sits where the AQM sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from emulation.config import CC_TYPE_IDS, QUEUE_TYPE_IDS, SimulationConfig


class TopologyError(ValueError):
    """The configuration cannot be built (bad queue parameter, impossible delay)."""


#: Access links run this many times faster than the bottleneck.
ACCESS_SPEEDUP = 10.0


@dataclass
class Dumbbell:
    """Endpoint pairs in order: the bulk flows first, then the video clients.

    Index i of ``senders``/``receivers`` is the left (server) and right
    (client) node of pair i; ``video_pair(j)`` gives the index of video client j.
    """

    senders: list = field(default_factory=list)
    receivers: list = field(default_factory=list)
    sender_addresses: list = field(default_factory=list)
    receiver_addresses: list = field(default_factory=list)
    n_flows: int = 0
    router_left: object = None
    router_right: object = None
    bottleneck_device: object = None  # routerL's device towards routerR
    queue_disc: object = None
    queue_type: str = "dualpi2"

    def video_pair(self, j: int) -> int:
        return self.n_flows + j


def configure_tcp_defaults(ns, segment_size_bytes: int, bdp_bytes: int) -> None:
    """Realistic TCP defaults (ns-3's are not).

    Segments of 1448 bytes, socket buffers above the bandwidth-delay product (so the window, not the
    buffer, limits a flow), an initial window of 10, MinRto 200 ms as Linux, and a 40 ms delayed-ACK
    timeout: with ns-3's default of 200 ms beside MinRto 200 ms a DCTCP flow can lock at one segment.
    """
    buf = max(4 * bdp_bytes, 1 << 20)
    sets = {
        "ns3::TcpSocket::SegmentSize": ns.UintegerValue(segment_size_bytes),
        "ns3::TcpSocket::SndBufSize": ns.UintegerValue(buf),
        "ns3::TcpSocket::RcvBufSize": ns.UintegerValue(buf),
        "ns3::TcpSocket::InitialCwnd": ns.UintegerValue(10),
        "ns3::TcpSocket::DelAckTimeout": ns.TimeValue(ns.MilliSeconds(40)),
        "ns3::TcpSocket::DelAckCount": ns.UintegerValue(2),
        "ns3::TcpSocketBase::MinRto": ns.TimeValue(ns.MilliSeconds(200)),
        # Receivers accept ECN when the sender asks; senders choose per flow.
        "ns3::TcpSocketBase::UseEcn": ns.StringValue("AcceptOnly"),
    }
    for name, value in sets.items():
        ns.Config.SetDefault(name, value)


_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"
#: What ns-3 can parse for each attribute value type; ns-3 itself aborts the
#: process on a malformed string, so we check the form first.
_VALUE_FORMS = {
    "ns3::DoubleValue": re.compile(rf"^{_NUMBER}$"),
    "ns3::UintegerValue": re.compile(r"^\d+$"),
    "ns3::IntegerValue": re.compile(r"^[+-]?\d+$"),
    "ns3::BooleanValue": re.compile(r"^(true|false|1|0)$"),
    "ns3::TimeValue": re.compile(rf"^{_NUMBER}(s|ms|us|ns|ps|fs|min|h|d|y)?$"),
    "ns3::QueueSizeValue": re.compile(r"^\d+(p|B|kB|KB|KiB|MB|MiB)$"),
    "ns3::DataRateValue": re.compile(rf"^{_NUMBER}(bps|kbps|Kbps|Mbps|Gbps|b/s|kb/s|Mb/s|Gb/s|Bps|KBps|MBps)$"),
}


def _attributes(ns, type_name: str) -> dict:
    tid = ns.TypeId.LookupByName(type_name)
    found = {}
    while True:
        for i in range(tid.GetAttributeN()):
            info = tid.GetAttribute(i)
            found.setdefault(str(info.name), info)
        if tid == tid.GetParent():
            return found
        tid = tid.GetParent()


def create_queue_disc(ns, queue_type: str, params: dict):
    """Create the bottleneck queue disc, rejecting bad attributes with a clear error."""
    type_name = QUEUE_TYPE_IDS[queue_type]
    factory = ns.ObjectFactory()
    factory.SetTypeId(type_name)
    disc = factory.Create().GetObject[ns.QueueDisc]()
    attributes = _attributes(ns, type_name)
    for key, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        info = attributes.get(key)
        if info is None:
            raise TopologyError(f"queue '{queue_type}' has no parameter '{key}'; known: {', '.join(sorted(attributes))}")
        value_type = str(info.checker.GetValueTypeName())
        expected = str(info.checker.GetUnderlyingTypeInformation())
        form = _VALUE_FORMS.get(value_type)
        if value_type.startswith("ns3::EnumValue"):
            ok = text in expected.split("|")
        else:
            ok = form.match(text) is not None if form else True
        if not ok or not disc.SetAttributeFailSafe(key, ns.StringValue(text)):
            raise TopologyError(
                f"queue '{queue_type}' parameter {key}={value!r} rejected (expected {expected}: {info.help})"
            )
    return disc


def build_dumbbell(ns, config: SimulationConfig) -> Dumbbell:
    # One pair per bulk flow, then one per video client: (base RTT, congestion control).
    pairs = [(f.rtt_ms, f.cc or "cubic") for f in config.all_flows()]
    pairs += [(v.rtt_ms, v.congestion_control) for v in config.all_video()]
    bn = config.bottleneck
    rate_bps = bn.rate_mbps * 1e6
    access_rate = ns.DataRate(int(rate_bps * ACCESS_SPEEDUP))
    max_rtt_s = max((rtt for rtt, _ in pairs), default=10.0) / 1e3
    configure_tcp_defaults(ns, config.segment_size_bytes, int(rate_bps * max(max_rtt_s, 0.1) / 8))

    net = Dumbbell(queue_type=bn.queue.type, n_flows=len(config.all_flows()))
    net.router_left, net.router_right = ns.CreateObject[ns.Node](), ns.CreateObject[ns.Node]()
    for _ in pairs:
        net.senders.append(ns.CreateObject[ns.Node]())
        net.receivers.append(ns.CreateObject[ns.Node]())
    stack = ns.InternetStackHelper()
    for node in [net.router_left, net.router_right]:
        stack.Install(node)
    for (_, cc_name), s, r in zip(pairs, net.senders, net.receivers, strict=True):
        cc = CC_TYPE_IDS[cc_name]
        stack.Install(s)
        stack.Install(r)
        for node in (s, r):
            node.GetObject[ns.TcpL4Protocol]().SetAttribute("SocketType", ns.TypeIdValue(ns.TypeId.LookupByName(cc)))

    p2p = ns.PointToPointHelper()
    p2p.SetQueue("ns3::DropTailQueue<Packet>", "MaxSize", ns.QueueSizeValue(ns.QueueSize("1p")))
    p2p.SetDeviceAttribute("DataRate", ns.DataRateValue(ns.DataRate(int(rate_bps))))
    p2p.SetChannelAttribute("Delay", ns.TimeValue(ns.MicroSeconds(int(bn.delay_ms * 1000))))
    bottleneck = p2p.Install(net.router_left, net.router_right)
    net.bottleneck_device = bottleneck.Get(0)
    net.queue_disc = create_queue_disc(ns, bn.queue.type, bn.queue.params)
    tc = net.router_left.GetObject[ns.TrafficControlLayer]()
    tc.SetRootQueueDiscOnDevice(net.bottleneck_device, net.queue_disc)

    address = ns.Ipv4AddressHelper()
    address.SetBase(ns.Ipv4Address("10.0.0.0"), ns.Ipv4Mask("255.255.255.252"))
    address.Assign(bottleneck)
    for i, ((rtt_ms, _), s, r) in enumerate(zip(pairs, net.senders, net.receivers, strict=True)):
        one_way_us = int(rtt_ms * 500 - bn.delay_ms * 1000)
        p2p.SetDeviceAttribute("DataRate", ns.DataRateValue(access_rate))
        p2p.SetChannelAttribute("Delay", ns.TimeValue(ns.MicroSeconds(max(one_way_us, 0))))
        left = p2p.Install(s, net.router_left)
        p2p.SetChannelAttribute("Delay", ns.TimeValue(ns.MicroSeconds(0)))
        right = p2p.Install(net.router_right, r)
        address.SetBase(ns.Ipv4Address(f"10.1.{i}.0"), ns.Ipv4Mask("255.255.255.252"))
        net.sender_addresses.append(address.Assign(left).GetAddress(0))
        address.SetBase(ns.Ipv4Address(f"10.2.{i}.0"), ns.Ipv4Mask("255.255.255.252"))
        net.receiver_addresses.append(address.Assign(right).GetAddress(1))
    ns.Ipv4GlobalRoutingHelper.PopulateRoutingTables()
    return net
