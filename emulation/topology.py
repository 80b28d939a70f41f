"""Dumbbell topology: one sender and one receiver node per flow, two routers,
and the bottleneck between them.

Per-flow nodes let each flow keep its own TCP congestion control on both
ends (a DCTCP receiver must run DCTCP's ECE logic) and its own base RTT,
set on the sender's access link. The bottleneck queue disc is installed
before addresses are assigned (or ns-3 puts FqCoDel there) and the device
queue holds one packet, so the backlog sits where the AQM sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emulation.config import CC_TYPE_IDS, QUEUE_TYPE_IDS, SimulationConfig


class TopologyError(ValueError):
    """The configuration cannot be built (bad queue parameter, impossible delay)."""


#: Access links run this many times faster than the bottleneck.
ACCESS_SPEEDUP = 10.0


@dataclass
class Dumbbell:
    senders: list = field(default_factory=list)
    receivers: list = field(default_factory=list)
    receiver_addresses: list = field(default_factory=list)
    router_left: object = None
    router_right: object = None
    bottleneck_device: object = None  # routerL's device towards routerR
    queue_disc: object = None
    queue_type: str = "dualpi2"


def configure_tcp_defaults(ns, segment_size_bytes: int, bdp_bytes: int) -> None:
    """Realistic TCP defaults (ns-3's are not): see shared/reference/ns3-wheel.md."""
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


def create_queue_disc(ns, queue_type: str, params: dict):
    """Create the bottleneck queue disc, rejecting bad attributes with a clear error."""
    type_name = QUEUE_TYPE_IDS[queue_type]
    factory = ns.ObjectFactory()
    factory.SetTypeId(type_name)
    disc = factory.Create().GetObject[ns.QueueDisc]()
    tid = ns.TypeId.LookupByName(type_name)
    for key, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        info = ns.TypeId.AttributeInformation()
        if not tid.LookupAttributeByName(key, info):
            known = sorted(tid.GetAttribute(i).name for i in range(tid.GetAttributeN()))
            raise TopologyError(f"queue '{queue_type}' has no parameter '{key}'; known: {', '.join(known)}")
        if not disc.SetAttributeFailSafe(key, ns.StringValue(text)):
            raise TopologyError(
                f"queue '{queue_type}' parameter {key}={value!r} rejected by ns-3 "
                f"(expected {info.checker.GetUnderlyingTypeInformation()}: {info.help})"
            )
    return disc


def build_dumbbell(ns, config: SimulationConfig) -> Dumbbell:
    flows = config.all_flows()
    bn = config.bottleneck
    rate_bps = bn.rate_mbps * 1e6
    access_rate = ns.DataRate(int(rate_bps * ACCESS_SPEEDUP))
    max_rtt_s = max((f.rtt_ms for f in flows), default=10.0) / 1e3
    configure_tcp_defaults(ns, config.segment_size_bytes, int(rate_bps * max(max_rtt_s, 0.1) / 8))

    net = Dumbbell(queue_type=bn.queue.type)
    net.router_left, net.router_right = ns.CreateObject[ns.Node](), ns.CreateObject[ns.Node]()
    for _ in flows:
        net.senders.append(ns.CreateObject[ns.Node]())
        net.receivers.append(ns.CreateObject[ns.Node]())
    stack = ns.InternetStackHelper()
    for node in [net.router_left, net.router_right]:
        stack.Install(node)
    for flow, s, r in zip(flows, net.senders, net.receivers):
        cc = CC_TYPE_IDS[flow.cc] if flow.cc else "ns3::TcpCubic"
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
    for i, (flow, s, r) in enumerate(zip(flows, net.senders, net.receivers)):
        one_way_us = int(flow.rtt_ms * 500 - bn.delay_ms * 1000)
        p2p.SetDeviceAttribute("DataRate", ns.DataRateValue(access_rate))
        p2p.SetChannelAttribute("Delay", ns.TimeValue(ns.MicroSeconds(max(one_way_us, 0))))
        left = p2p.Install(s, net.router_left)
        p2p.SetChannelAttribute("Delay", ns.TimeValue(ns.MicroSeconds(0)))
        right = p2p.Install(net.router_right, r)
        address.SetBase(ns.Ipv4Address(f"10.1.{i}.0"), ns.Ipv4Mask("255.255.255.252"))
        address.Assign(left)
        address.SetBase(ns.Ipv4Address(f"10.2.{i}.0"), ns.Ipv4Mask("255.255.255.252"))
        net.receiver_addresses.append(address.Assign(right).GetAddress(1))
    ns.Ipv4GlobalRoutingHelper.PopulateRoutingTables()
    return net
