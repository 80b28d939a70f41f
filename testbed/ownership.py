"""One writer per run directory, and the status it leaves there.

A run directory is claimed with a lock file (``.lock``, an exclusive ``flock``) before anything is
written into it, and stays claimed until the last process of the run exits: the simulation and agent
processes inherit the lock, so a run whose testbed process was killed keeps its directory until its
children have stopped. A claim refuses a directory that holds files of an earlier run unless asked to
overwrite, which clears them first, so no table of another run is ever read as this run's.

``status.json`` says ``running`` (with the owner's host and pid), ``ok`` or ``failed`` with the error;
an interrupted run is ``failed`` with the error ``interrupted``, which a resumed grid runs again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from emulation.rundir import read_json, write_json

LOCK_FILE = ".lock"
STATUS_FILE = "status.json"
#: The error of a run stopped by Ctrl-C, a stop signal or the death of its testbed process: not a failure
#: of the run, so a resumed grid runs it again.
INTERRUPTED = "interrupted"


class RunDirError(ValueError):
    """A run directory cannot be used: not writable, holding another run, or being written by another process."""


class RunDirBusy(RunDirError):
    """Another live process is writing into the run directory."""


class RunDirClaim:
    """This process's exclusive right to write one run directory; :meth:`release` (or ``with``) ends it."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir = run_dir
        self.fd = fd

    def release(self) -> None:
        """Close the lock (children that inherited it keep the directory claimed until they exit)."""
        if self.fd >= 0:
            os.close(self.fd)  # never LOCK_UN: that would release the children's share of the lock too
            self.fd = -1

    def __enter__(self) -> RunDirClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def claim(run_dir: Path, *, overwrite: bool = False, keep: Iterable[str] = ()) -> RunDirClaim:
    """Claim ``run_dir`` for this process, creating it; refuse it if busy, or if it holds files (other than
    ``keep``) and ``overwrite`` is false; with ``overwrite``, clear them."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot write results to {run_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise RunDirBusy(f"{run_dir} is being written by another testbed process ({owner}); wait for it, "
                         "or choose another output directory") from None
    lock = RunDirClaim(run_dir, fd)
    try:
        keep = set(keep)
        leftovers = sorted(p for p in run_dir.iterdir() if p.name != LOCK_FILE and p.name not in keep)
        if leftovers and not overwrite:
            names = ", ".join(p.name for p in leftovers[:5]) + (", ..." if len(leftovers) > 5 else "")
            raise RunDirError(f"{run_dir} already holds a run ({names}); pass --overwrite to replace it, "
                              "or choose another output directory")
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
    except OSError as exc:
        lock.release()
        raise RunDirError(f"cannot write results to {run_dir}: {exc.strerror or exc}") from None
    except BaseException:
        lock.release()
        raise
    return lock


def _read_owner(fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {owner['pid']} on {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def is_claimed(run_dir: Path) -> bool:
    """Whether a live process holds the run directory's lock."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def write_status(run_dir: Path, state: str, **fields: object) -> None:
    write_json(Path(run_dir) / STATUS_FILE, {"state": state, **fields})


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS_FILE
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        return {"state": "failed", "error": f"unreadable {path}: {exc}"}


def mark_interrupted(run_dir: Path, **fields: object) -> None:
    """A run stopped before its end by a signal or its owner's death: recorded as not finished."""
    write_status(run_dir, "failed", error=INTERRUPTED, **fields)
