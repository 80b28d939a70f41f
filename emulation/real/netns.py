"""Anonymous network namespaces, each with one TAP, for the run's real hosts.

A namespace made with ``unshare(CLONE_NEWNET)`` has no name and no mount: the
kernel keeps it while a process lives in it or a file descriptor refers to
it, and frees it (with its interfaces, routes and sysctls) when the last one
goes. Its TAP is not persistent, so it disappears with its last descriptor.
The run's processes are therefore the only things that can outlive a run,
and they are tied to their parents' lives (``die_with_parent``): whatever
kills the run (success, error, Ctrl-C, SIGTERM, SIGKILL of the CLI), the
kernel removes every namespace and TAP it made. Nothing has to be swept up.

Namespaces and TAPs are made on the calling thread (namespaces are per
thread in Linux), which returns to its own namespace before this returns.
Stdlib only: the endpoint processes import this too.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct
import subprocess
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
PR_SET_PDEATHSIG = 1
#: Name of the TAP inside each namespace (one interface per namespace, so no name can clash).
TAP_NAME = "tap0"
TUN_PATH = "/dev/net/tun"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when the thread that started it dies.

    Exits at once if the parent is already gone (the race between fork and prctl).
    """
    _check(_libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass
class RealHost:
    """One Linux host: a namespace with a TAP whose far end is an ns-3 FdNetDevice.

    ``tap_fd`` belongs to the FdNetDevice once handed over (ns-3 closes it);
    ``netns_fd`` keeps the namespace alive until :meth:`close` and lets the
    host's processes enter it.
    """

    name: str
    address: str
    gateway: str
    prefix_len: int
    peer_subnet: str
    netns_fd: int
    tap_fd: int
    netns_inode: int
    sysctls: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1


def _write_sysctl(key: str, value: str) -> None:
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(str(value))


def _open_tap() -> int:
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TAP_NAME.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def create_host(name: str, address: str, gateway: str, prefix_len: int, peer_subnet: str,
                sysctls: dict[str, str]) -> RealHost:
    """A new namespace with IPv6 off, ``sysctls`` set, and a TAP at ``address``/``prefix_len``.

    Its one route leads to ``peer_subnet`` through ``gateway`` (the FdNetDevice's
    address): no default route, so nothing can leave for the host's network.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    netns_fd = tap_fd = -1
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            # Before the TAP exists, so it never gets an IPv6 address (no router or neighbour solicitations).
            settings = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1", **sysctls}
            for key, value in settings.items():
                _write_sysctl(key, value)
            tap_fd = _open_tap()
            commands = (f"link set lo up\n"
                        f"link set {TAP_NAME} mtu 1500\n"
                        f"addr add {address}/{prefix_len} dev {TAP_NAME}\n"
                        f"link set {TAP_NAME} up\n"
                        f"route add {peer_subnet} via {gateway} dev {TAP_NAME}\n")
            proc = subprocess.run(["ip", "-batch", "-"], input=commands, capture_output=True, text=True)
            if proc.returncode != 0:
                raise OSError(f"configuring host '{name}' failed: ip: {proc.stderr.strip()}")
        finally:
            setns(home)
    except BaseException:
        for fd in (tap_fd, netns_fd):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        os.close(home)
    return RealHost(name, address, gateway, prefix_len, peer_subnet, netns_fd, tap_fd,
                    os.fstat(netns_fd).st_ino, dict(sysctls))
