"""What real mode needs from the machine, checked before anything starts.

Real mode makes network namespaces (CAP_SYS_ADMIN), TAP devices in them
(CAP_NET_ADMIN, ``/dev/net/tun``) and configures them with iproute2's ``ip``.
A run that lacks any of these fails at once with a message naming each
missing piece, instead of failing half-way through building its hosts.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys

from emulation.real.netns import TUN_PATH

#: Capability bits (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


class RealModeUnavailable(RuntimeError):
    """This machine or process cannot run real mode; the message says what is missing."""


def _effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_for_real_mode(tun_path: str = TUN_PATH) -> list[str]:
    """Everything real mode needs that this process lacks, in words (empty: all there)."""
    if not sys.platform.startswith("linux"):
        return [f"Linux (network namespaces and TAP devices); this is {sys.platform}"]
    missing = []
    caps = _effective_capabilities()
    lacking = [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
               if not caps >> bit & 1]
    if lacking:
        missing.append(f"the capabilities {' and '.join(lacking)} (run as root, with them; this process, uid "
                       f"{os.getuid()}, lacks them)")
    try:
        mode = os.stat(tun_path).st_mode
    except FileNotFoundError:
        missing.append(f"{tun_path} (the TUN/TAP device: load the 'tun' kernel module, or pass the device into "
                       "the container)")
    else:
        if not stat.S_ISCHR(mode):
            missing.append(f"{tun_path} as a character device (it is not one)")
        elif not os.access(tun_path, os.R_OK | os.W_OK):
            missing.append(f"read and write access to {tun_path}")
    if shutil.which("ip") is None:
        missing.append("the 'ip' command (iproute2) on PATH")
    return missing


def check_real_mode(tun_path: str = TUN_PATH) -> None:
    """Raise :class:`RealModeUnavailable` naming everything real mode lacks here."""
    missing = missing_for_real_mode(tun_path)
    if missing:
        raise RealModeUnavailable("real mode (emulation.mode: real) cannot run here; it needs "
                                  + "; ".join(missing))
