"""The run's real hosts: namespaces attached to the dumbbell, their processes, their results.

Endpoint pair ``i`` of the dumbbell (``emulation.topology``) keeps its two
ns-3 nodes, which become the hosts' first hops: each gets an ``FdNetDevice``
whose file descriptor is the TAP of a namespace, so the sender's access link
(and its share of the base RTT) stays in the simulation. Addresses:

    left host (sender, video server)   10.3.<i>.2/24, via 10.3.<i>.1 (its ns-3 node)
    right host (receiver, player)      10.4.<i>.2/24, via 10.4.<i>.1

Each host routes only to its peer's /24. The processes on the hosts
(``emulation.real.endpoint``) are children of this process, started from its
main thread and tied to it (they die with it); ``finish`` stops them, turns
their reports into the run's tables (flows.parquet rows, video.parquet rows)
and reads each TAP's pcap. A host process that reports an error stops the
run with that error.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from emulation.config import FlowConfig, SimulationConfig, VideoClientConfig
from emulation.pcap_ecn import ECN_NAMES, flow_stats
from emulation.real.netns import RealHost, create_host
from emulation.rundir import write_json
from emulation.topology import ACCESS_SPEEDUP
from emulation.traffic import BASE_PORT
from emulation.video.manifest import VideoManifest
from emulation.video.session import VIDEO_PORT, add_video_results, check_quality, chunk_table, manifest_for_config

log = logging.getLogger(__name__)

PREFIX_LEN = 24
#: Bytes of every pcap record (Ethernet + IPv4 + TCP with options fit; payloads are not kept).
SNAP_LEN_BYTES = 128
#: UDP payload size of real UDP flows.
UDP_PACKET_BYTES = 1200
#: Seconds the host processes get to start (import Python, bind their sockets).
READY_TIMEOUT_S = 20.0
#: Seconds they get to report after the run stops, before they are killed.
STOP_TIMEOUT_S = 10.0
#: A host process exits by itself this long after the run's simulated duration, whatever happens.
DEADLINE_GRACE_S = 60.0
#: The player's full-buffer wait granularity (the simulated client's WaitStep).
WAIT_STEP_S = 0.5
#: IP TOS byte of an ECN udp flow: ECT(1), the L4S identifier.
TOS_ECT1 = 0x01
#: Congestion control of real video servers (the simulated classic client's Cubic).
VIDEO_CC = "cubic"
#: The state file of the run's hosts (for users and leak checks).
HOSTS_FILE = "real-hosts.json"

Decide = Callable[[object], int]


class RealHostError(RuntimeError):
    """A process on a real host failed; the message names the host and role."""


class HostProcess:
    """One process on a real host, driven over its standard streams (``emulation.real.endpoint``).

    A reader thread takes its events: ``ready``, ``report`` and ``error`` are kept here,
    the others go to ``on_event(process, event, fields)``.
    """

    def __init__(self, host: RealHost, role: str, params: dict,
                 on_event: Callable[[HostProcess, str, dict], None] | None = None) -> None:
        self.host, self.role = host, role
        self.ready = threading.Event()  # set on its "ready" event, or when it ended without one
        self.started = False  # it sent "ready"
        self.report: dict | None = None
        self.error: str | None = None
        self.on_event = on_event
        self._write_lock = threading.Lock()
        cmd = [sys.executable, "-m", "emulation.real.endpoint", role, "--netns-fd", str(host.netns_fd),
               "--parent-pid", str(os.getpid()), "--params", json.dumps({"host": host.name, **params})]
        # Started from the main thread: the child's parent-death signal follows this thread's life.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     pass_fds=(host.netns_fd,))
        self._reader = threading.Thread(target=self._read, name=f"host-{host.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                fields = json.loads(line)
            except json.JSONDecodeError:
                log.warning("host %s: unreadable line %r", self.host.name, line[:200])
                continue
            event = fields.pop("event", None)
            if event == "ready":
                self.started = True
                self.ready.set()
            elif event == "report":
                self.report = fields
            elif event == "error":
                self.error = fields.get("error", "unknown error")
                if self.on_event is not None:
                    self.on_event(self, event, fields)
            elif self.on_event is not None:
                self.on_event(self, event, fields)
        self.ready.set()  # a process that ended never keeps a waiter waiting

    def command(self, cmd: str, **fields) -> None:
        """Send a command; a process that already ended is not an error here (its report says why)."""
        with self._write_lock:
            try:
                self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def close_input(self) -> None:
        """End of input: the process stops, reports and exits."""
        with self._write_lock:
            try:
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass

    def wait(self, timeout_s: float) -> None:
        """Wait for the report and the exit; kill the process after ``timeout_s``."""
        self._reader.join(timeout_s)
        try:
            self.proc.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.error is None and self.proc.returncode not in (0, None):
            self.error = f"exited with code {self.proc.returncode}"


@dataclass
class _Pair:
    """The two hosts of one dumbbell endpoint pair and the processes on them."""

    pair: int
    endpoint: FlowConfig | VideoClientConfig
    left: RealHost
    right: RealHost
    pcaps: dict[str, Path] = field(default_factory=dict)  # host name -> capture
    processes: list[HostProcess] = field(default_factory=list)


@dataclass
class _Player:
    """A real video client's manifest, decision function and the chunk records it has sent."""

    config: VideoClientConfig
    manifest: VideoManifest
    decide: Decide
    chunks: list[dict] = field(default_factory=list)


def _left(pair: int) -> tuple[str, str, str]:
    """(host address, gateway, subnet) of the left host of ``pair``."""
    return f"10.3.{pair}.2", f"10.3.{pair}.1", f"10.3.{pair}.0"


def _right(pair: int) -> tuple[str, str, str]:
    return f"10.4.{pair}.2", f"10.4.{pair}.1", f"10.4.{pair}.0"


def expected_ecn(flow: FlowConfig | VideoClientConfig) -> str:
    """The ECN codepoint a real endpoint's data packets leave with (pcap_ecn's names)."""
    if isinstance(flow, VideoClientConfig) or not flow.ecn:
        return "not_ect"
    return "ect1" if flow.kind == "udp" else "ect0"


class RealHosts:
    """Component: the endpoints a real-mode run marks ``real``, on Linux hosts.

    ``decide`` maps each real video client to its bitrate decision function
    (an ABR policy's ``act`` or an ``AbrControlPoint.decide``), called from the
    client's reader thread while the simulator runs.
    """

    def __init__(self, config: SimulationConfig, decide: Mapping[str, Decide],
                 manifest_for: Callable[[VideoClientConfig], VideoManifest] = manifest_for_config) -> None:
        if not config.real_mode:
            raise ValueError("RealHosts needs emulation.mode real")
        self.config = config
        flows = config.all_flows()
        self.flows = [(i, f) for i, f in enumerate(flows) if config.is_real(f)]
        self.videos = [(len(flows) + j, v) for j, v in enumerate(config.all_video()) if config.is_real(v)]
        missing = sorted({v.name for _, v in self.videos} - set(decide))
        if missing:
            raise ValueError(f"no decision function for the real video clients {missing}")
        self.players = {v.name: _Player(v, manifest_for(v), decide[v.name]) for _, v in self.videos}
        self.pairs: list[_Pair] = []
        self._events: list[Callable[[], None]] = []  # scheduled callables, kept alive for C++
        self._pcap_files: list = []
        self.sim = None

    # ------------------------------------------------------------ set-up

    def attach(self, sim) -> None:
        if sim.realtime is None:
            raise RuntimeError("real hosts need the real-time simulator (emulation.mode real)")
        self.sim = sim
        try:
            self._build(sim)
        except BaseException:
            self._stop_processes()
            self._close_hosts()
            raise

    def _build(self, sim) -> None:
        ns, config = sim.ns, self.config
        end_s = config.duration_s
        deadline_s = end_s + DEADLINE_GRACE_S
        for pair, flow in self.flows:
            tcp = flow.kind != "udp"
            # ECN per namespace: the sender asks for it (1) or not (0), the receiver accepts when asked (2).
            sender_sysctls = {"net.ipv4.tcp_ecn": "1" if flow.ecn else "0"}
            p = self._pair(sim, pair, flow, ("sender", "receiver"), sender_sysctls if tcp else {},
                           {"net.ipv4.tcp_ecn": "2"} if tcp else {})
            stop_s = flow.stop_s if flow.stop_s is not None else end_s
            active_s = max(stop_s - flow.start_s, 0.0)
            port = BASE_PORT + pair
            if tcp:
                # No more than the access link could carry: a bound in bytes as well as in time.
                bound = flow.max_bytes or int(config.bottleneck.rate_mbps * 1e6 * ACCESS_SPEEDUP * active_s / 8) + 1
                p.processes.append(HostProcess(p.right, "tcp-receiver", {
                    "address": p.right.address, "port": port, "deadline_s": deadline_s}, self._on_event))
                sender = HostProcess(p.left, "tcp-sender", {
                    "remote": p.right.address, "port": port, "cc": flow.cc, "max_bytes": bound,
                    "deadline_s": deadline_s}, self._on_event)
            else:
                bound = flow.max_bytes or int(flow.rate_mbps * 1e6 * active_s / 8) + UDP_PACKET_BYTES
                p.processes.append(HostProcess(p.right, "udp-receiver", {
                    "address": p.right.address, "port": port, "deadline_s": deadline_s}, self._on_event))
                sender = HostProcess(p.left, "udp-sender", {
                    "remote": p.right.address, "port": port, "rate_bps": flow.rate_mbps * 1e6,
                    "tos": TOS_ECT1 if flow.ecn else 0, "packet_bytes": UDP_PACKET_BYTES, "max_bytes": bound,
                    "deadline_s": deadline_s}, self._on_event)
            p.processes.append(sender)
            self._go(ns, sender, flow.start_s, active_s)
        for pair, client in self.videos:
            player = self.players[client.name]
            manifest = player.manifest
            p = self._pair(sim, pair, client, ("server", "player"), {"net.ipv4.tcp_ecn": "2"}, {"net.ipv4.tcp_ecn": "0"})
            p.processes.append(HostProcess(p.left, "video-server", {
                "address": p.left.address, "port": VIDEO_PORT, "cc": VIDEO_CC, "chunk_bytes": manifest.chunk_bytes.tolist(),
                "deadline_s": deadline_s}, self._on_event))
            process = HostProcess(p.right, "video-player", {
                "server": p.left.address, "port": VIDEO_PORT, "bitrates_bps": manifest.bitrates_bps.tolist(),
                "chunk_duration_s": manifest.chunk_duration_s, "n_chunks": manifest.n_chunks,
                "buffer_cap_s": client.buffer_cap_s, "start_quality": client.start_quality,
                "wait_step_s": WAIT_STEP_S, "deadline_s": deadline_s},
                lambda proc, event, fields, player=player: self._on_player_event(player, proc, event, fields))
            p.processes.append(process)
            self._go(ns, process, client.start_s, max(end_s - client.start_s, 0.0))
        ns.Ipv4GlobalRoutingHelper.RecomputeRoutingTables()
        for p in self.pairs:
            for process in p.processes:
                if not process.ready.wait(READY_TIMEOUT_S) or not process.started:
                    why = process.error or f"not ready within {READY_TIMEOUT_S:g} s"
                    raise RealHostError(f"host {process.host.name} ({process.role}) did not start: {why}")
        write_json(sim.out_dir / HOSTS_FILE, self._hosts_record())

    def _pair(self, sim, pair: int, endpoint: FlowConfig | VideoClientConfig, roles: tuple[str, str],
              left_sysctls: dict, right_sysctls: dict) -> _Pair:
        (l_addr, l_gw, l_net), (r_addr, r_gw, r_net) = _left(pair), _right(pair)
        name = endpoint.name
        left = create_host(f"{name}-{roles[0]}", l_addr, l_gw, PREFIX_LEN, f"{r_net}/{PREFIX_LEN}", left_sysctls)
        try:
            right = create_host(f"{name}-{roles[1]}", r_addr, r_gw, PREFIX_LEN, f"{l_net}/{PREFIX_LEN}", right_sysctls)
        except BaseException:
            left.close()
            raise
        p = _Pair(pair, endpoint, left, right)
        self.pairs.append(p)
        for host, node, subnet in ((left, sim.net.senders[pair], l_net), (right, sim.net.receivers[pair], r_net)):
            self._attach_tap(sim, node, host, subnet, p)
        return p

    def _attach_tap(self, sim, node, host: RealHost, subnet: str, p: _Pair) -> None:
        """An FdNetDevice on ``node`` reading and writing ``host``'s TAP, at the host's gateway address."""
        import cppyy

        ns = sim.ns
        device = ns.FdNetDeviceHelper().Install(node).Get(0)
        fd_device = ns.DynamicCast[ns.FdNetDevice](device)
        fd_device.SetFileDescriptor(host.tap_fd)  # ns-3 owns and closes the TAP from now on
        address = ns.Ipv4AddressHelper()
        address.SetBase(ns.Ipv4Address(subnet), ns.Ipv4Mask("255.255.255.0"), ns.Ipv4Address("0.0.0.1"))
        address.Assign(ns.NetDeviceContainer(device))
        if self.config.emulation.capture:
            path = sim.out_dir / f"tap-{host.name}.pcap"
            helper = ns.PcapHelper()
            pcap = helper.CreateFile(str(path), cppyy.gbl.std.ios.out, ns.PcapHelper.DLT_EN10MB, SNAP_LEN_BYTES)
            helper.HookDefaultSink[ns.FdNetDevice](fd_device, "Sniffer", pcap)
            self._pcap_files.append(pcap)
            p.pcaps[host.name] = path

    def _go(self, ns, process: HostProcess, start_s: float, duration_s: float) -> None:
        """Tell ``process`` to start at simulated ``start_s`` (= wall-clock time in real mode)."""
        if start_s >= self.config.duration_s:
            return
        event = lambda: process.command("go", duration_s=duration_s)  # noqa: E731
        self._events.append(event)
        ns.ScheduleFunction(ns.Seconds(start_s), event)

    def _hosts_record(self) -> dict:
        hosts = {}
        for p in self.pairs:
            for process in p.processes:
                hosts[process.host.name] = {"role": process.role, "address": process.host.address,
                                            "netns_inode": process.host.netns_inode, "pid": process.proc.pid}
        return {"sim_pid": os.getpid(), "hosts": hosts}

    # ------------------------------------------------------------ while running (reader threads)

    def _on_event(self, process: HostProcess, event: str, fields: dict) -> None:
        if event == "error":
            self.sim.fail(RealHostError(f"host {process.host.name}: {fields.get('error')}"))

    def _on_player_event(self, player: _Player, process: HostProcess, event: str, fields: dict) -> None:
        if event == "chunk":
            player.chunks.append(fields)
        elif event == "decide":
            try:
                chunks = player.chunks
                download_s = [c["last_byte_t"] - c["request_t"] for c in chunks]
                throughput_bps = [c["chunk_bytes"] * 8.0 / d for c, d in zip(chunks, download_s, strict=True)]
                obs = player.manifest.abr_observation(fields["chunk"], fields["last_quality"], fields["buffer_s"],
                                                      chunks[-1]["rebuffer_s"] if chunks else 0.0,
                                                      throughput_bps, download_s)
                quality = check_quality(player.config.name, player.decide(obs), player.manifest.n_levels,
                                        fields["chunk"])
            except Exception as exc:  # the run stops with it; the player waits for the end of its input
                self.sim.fail(exc)
                return
            process.command("quality", quality=quality)
        else:
            self._on_event(process, event, fields)

    # ------------------------------------------------------------ results

    def _stop_processes(self) -> None:
        processes = [proc for p in self.pairs for proc in p.processes]
        for process in processes:
            process.close_input()
        for process in processes:
            process.wait(STOP_TIMEOUT_S)

    def _close_hosts(self) -> None:
        for p in self.pairs:
            p.left.close()
            p.right.close()

    def finish(self, sim) -> None:
        self._stop_processes()
        for pcap in self._pcap_files:
            pcap.Close()
        self._close_hosts()
        by_process = {proc.host.name: proc for p in self.pairs for proc in p.processes}
        grid_s = _sample_grid(sim)
        flow_rows, flows_summary, videos_summary, results = [], {}, {}, {}
        for p in self.pairs:
            left, right, endpoint = by_process[p.left.name], by_process[p.right.name], p.endpoint
            entry = {"left_host": p.left.name, "right_host": p.right.name, "expected_ecn": expected_ecn(endpoint),
                     "pcap": self._pcap_summary(p)}
            if isinstance(endpoint, VideoClientConfig):
                player = self.players[endpoint.name]
                results[endpoint.name] = (self._chunk_table(player, sim), player.manifest)
                videos_summary[endpoint.name] = {**entry, "server_report": left.report}
                continue
            report = right.report or {}
            flow_rows.append(self._goodput_rows(endpoint.name, report.get("samples", []), grid_s, sim))
            flows_summary[endpoint.name] = {**entry, "kind": endpoint.kind, "cc": endpoint.cc, "ecn": endpoint.ecn,
                                            "sender_report": left.report,
                                            "receiver_report": _without(report, "samples")}
        if flow_rows:
            sim.extra_flows.append(pd.concat(flow_rows, ignore_index=True))
        add_video_results(sim, results)
        sim.summary_extra["real"] = {"hosts": self._hosts_record()["hosts"], "flows": flows_summary,
                                     "video": videos_summary}
        errors = [f"host {proc.host.name} ({proc.role}): {proc.error}" for proc in by_process.values() if proc.error]
        if errors:
            raise RealHostError("; ".join(errors))

    def _goodput_rows(self, name: str, samples: list, grid_s: np.ndarray, sim) -> pd.DataFrame:
        """flows.parquet rows of a real flow: bytes its receiver got in each probe interval."""
        interval_s = self.config.probes.interval_ms / 1e3
        cumulative = np.zeros(len(grid_s))
        if samples:
            times = sim.realtime.to_sim_s([t for t, _ in samples])
            totals = np.asarray([b for _, b in samples], dtype=np.float64)
            index = np.searchsorted(times, grid_s, side="right") - 1
            cumulative = np.where(index >= 0, totals[np.maximum(index, 0)], 0.0)
        rx_bytes = np.diff(cumulative, prepend=0.0).astype(np.uint64)
        return pd.DataFrame({"time_s": grid_s, "flow": name, "rx_bytes": rx_bytes,
                             "goodput_bps": rx_bytes * 8.0 / interval_s})

    def _pcap_summary(self, p: _Pair) -> dict:
        """Data packets from the left host to the right one, as each TAP saw them."""
        out = {}
        for host in (p.left, p.right):
            path = p.pcaps.get(host.name)
            if path is None:
                continue
            stats = flow_stats(path)
            stats = stats[(stats["src"] == p.left.address) & (stats["dst"] == p.right.address)]
            out["sender_tap" if host is p.left else "receiver_tap"] = {
                "file": path.name, **{c: int(stats[c].sum()) for c in ("data_packets", *ECN_NAMES, "retransmissions")}}
        return out

    def _chunk_table(self, player: _Player, sim) -> pd.DataFrame:
        chunks = player.chunks
        columns = {key: np.asarray([c[key] for c in chunks]) for key in (
            "chunk", "quality", "bitrate_bps", "chunk_bytes", "buffer_before_s", "buffer_after_s", "rebuffer_s",
            "wait_s")}
        for key in ("request", "first_byte", "last_byte"):
            columns[f"{key}_s"] = sim.realtime.to_sim_s([c[f"{key}_t"] for c in chunks])
        return chunk_table(player.config.name, columns)


def _sample_grid(sim) -> np.ndarray:
    """End times of the probe intervals up to the end of the run (the simulated sinks' grid)."""
    interval_s = sim.config.probes.interval_ms / 1e3
    end_s = sim.ns.Simulator.Now().GetSeconds()
    return np.arange(1, int(np.floor(end_s / interval_s + 1e-6)) + 1) * interval_s


def _without(report: dict, key: str) -> dict:
    return {k: v for k, v in report.items() if k != key}
