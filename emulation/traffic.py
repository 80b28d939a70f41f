"""Senders and sinks of the dumbbell's flows.

TCP flows use our ``TcpBulkSender`` (congestion control and ECN per flow);
UDP flows use ns-3's OnOff source at a constant rate. Every flow ends in a
``PacketSink`` whose "Rx" trace feeds the C++ goodput probe.
"""

from __future__ import annotations

from emulation.config import CC_TYPE_IDS, SimulationConfig
from emulation.topology import Dumbbell

BASE_PORT = 5000


def install_flows(ns, config: SimulationConfig, net: Dumbbell) -> list:
    """Install every simulated flow; return their sink applications in flow order (real hosts' flows have none)."""
    sinks = []
    for i, flow in enumerate(config.all_flows()):
        if config.is_real(flow):
            continue
        port = BASE_PORT + i
        remote = ns.InetSocketAddress(net.receiver_addresses[i], port).ConvertTo()
        stop_s = flow.stop_s if flow.stop_s is not None else config.duration_s
        if flow.kind == "udp":
            factory = "ns3::UdpSocketFactory"
            onoff = ns.OnOffHelper(factory, remote)
            onoff.SetConstantRate(ns.DataRate(int(flow.rate_mbps * 1e6)), 1200)
            apps = onoff.Install(net.senders[i])
        else:
            factory = "ns3::TcpSocketFactory"
            sender = ns.CreateObject[ns.TcpBulkSender]()
            sender.SetAttribute("Remote", ns.AddressValue(remote))
            sender.SetAttribute("CongestionControl", ns.TypeIdValue(ns.TypeId.LookupByName(CC_TYPE_IDS[flow.cc])))
            sender.SetAttribute("UseEcn", ns.BooleanValue(flow.ecn))
            sender.SetAttribute("UseEct0", ns.BooleanValue(False))
            if flow.max_bytes:
                sender.SetAttribute("MaxBytes", ns.UintegerValue(flow.max_bytes))
            net.senders[i].AddApplication(sender)
            apps = ns.ApplicationContainer(sender)
        apps.Start(ns.Seconds(flow.start_s))
        apps.Stop(ns.Seconds(stop_s))
        sink_helper = ns.PacketSinkHelper(factory, ns.InetSocketAddress(ns.Ipv4Address.GetAny(), port).ConvertTo())
        sink_apps = sink_helper.Install(net.receivers[i])
        sink_apps.Start(ns.Seconds(0.0))
        sinks.append(sink_apps.Get(0))
    return sinks
