"""Process lifetime of a run: children die with their parent, signals stop a run the way Ctrl-C does, and
cleanup cannot be cut short by a second signal.

- :func:`spawn` starts a simulation or agent process in its own session (a terminal's Ctrl-C reaches only
  the testbed, which then stops its children in order) with ``PR_SET_PDEATHSIG`` set, so a ``kill -9`` of
  the testbed still takes its children down: the kernel sends them SIGTERM, which a simulation turns into
  a clean stop that writes what it has.
- :func:`stop_signals_interrupt` makes SIGTERM and SIGHUP (a CI cancel, ``timeout``, a closed terminal)
  raise :class:`Interrupted`, a ``KeyboardInterrupt``, so every path that handles Ctrl-C handles them too.
- :func:`uninterruptible` defers those signals while a cleanup runs.

The parent-death signal fires when the *thread* that started the child ends; the testbed starts children
from threads that outlive them (the main thread, or a pool worker that waits for its run).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

#: The signals that stop a run: Ctrl-C, a polite kill (CI cancel, ``timeout``), a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: prctl option (linux/prctl.h): signal this process gets when its parent (thread) dies.
_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) delivered to the testbed; handled wherever Ctrl-C is."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def exit_code(exc: BaseException) -> int:
    """Shell convention: 128 + the signal number (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def signal_name(exc: BaseException) -> str:
    return signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread while the block runs."""
    if not _in_main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """From now on the process is stopping: further stop signals must not cut its exit short."""
    if _in_main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def uninterruptible() -> Iterator[list[int]]:
    """Defer the stop signals while the block runs (a cleanup must finish); yields the signals that came.

    Only the main thread receives signals, so elsewhere this changes nothing (and needs to change nothing).
    """
    arrived: list[int] = []
    if not _in_main_thread():
        yield arrived
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: arrived.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield arrived
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once in the parent (the child between fork and exec must not load anything)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc.prctl


_PRCTL = _prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when this thread ends, or None where prctl is missing.

    If the parent is already gone when the child sets the signal, the child exits at once (the race a
    plain prctl leaves open).
    """
    if _PRCTL is None:
        return None
    parent = os.getpid()
    prctl = _PRCTL

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + int(sig))

    return preexec


def spawn(cmd: Sequence[str], log_path: Path, pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start a run's child process: own session, output to ``log_path``, dies with this thread.

    ``pass_fds`` stay open in the child (the run directory's lock, held until the child exits).
    """
    with open(log_path, "w") as log_file:
        return subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent(), pass_fds=tuple(pass_fds))


def stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> int | None:
    """SIGTERM the child's process group, SIGKILL it after ``grace_s``; return the child's exit code."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break  # the group is gone
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def describe_exit(rc: int) -> str:
    """What an exit code says about how a child ended (a signal, an ns-3 abort, an error exit)."""
    if rc < 0:
        hint = " (out of memory, or killed from outside)" if -rc == signal.SIGKILL else ""
        return f"killed by {_signal_name(-rc) or f'signal {-rc}'}{hint}"
    if rc == 133:
        return "aborted by ns-3 (NS_FATAL_ERROR or a failed assert, exit 133)"
    if rc > 128 and _signal_name(rc - 128):
        return f"stopped by {_signal_name(rc - 128)} (exit {rc})"
    return f"exited with code {rc}"
