"""Bandwidth traces: piecewise-constant link rates over time.

Two file formats are read, auto-detected from the first line:

- ``t_s  Mbps`` (two whitespace-separated numbers per line), the format of the
  Pensieve/NetLLM FCC and Norway traces.
- Mahimahi delivery traces: one integer millisecond timestamp per line, each a
  1500-byte delivery opportunity, the whole file repeating with a period equal
  to the last timestamp. They are converted to a rate per fixed bin
  (``mahimahi_bin_s``, 100 ms by default): opportunities in the bin x 1500 B x 8
  / bin width. Bins finer than a few RTTs keep Mahimahi's burstiness without
  making a link scheduler fire every millisecond.

Convention: ``bandwidth_bps[i]`` holds from ``times_s[i]`` until
``times_s[i + 1]``, and the trace repeats with period ``times_s[-1] -
times_s[0]`` (so the last sample only marks the end). The Pensieve chunk-level
simulator reads line ``i`` as the rate over ``(t[i-1], t[i]]`` instead;
``testbed.chunksim`` reproduces that reading for cross-checking.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_TRACE_DIR = Path(__file__).parent / "data" / "traces"
MAHIMAHI_PACKET_BYTES = 1500
#: The project's trace sets, disjoint by content: train on ``train``, select and tune on ``valid-*``.
TRACE_SETS = ("train", "valid-fcc", "valid-norway")


class TraceError(ValueError):
    """A trace that cannot be used; the message names the file and line at fault."""


@dataclass(frozen=True, eq=False)
class BandwidthTrace:
    """Link rate over time (see the module docstring for the step convention)."""

    times_s: np.ndarray
    bandwidth_bps: np.ndarray
    name: str = "trace"

    def __post_init__(self) -> None:
        times = np.array(self.times_s, dtype=np.float64)
        rates = np.array(self.bandwidth_bps, dtype=np.float64)
        if times.ndim != 1 or times.shape != rates.shape or times.size < 2:
            raise TraceError(
                f"{self.name}: times_s and bandwidth_bps must be 1-D of equal length >= 2, "
                f"got {times.shape} and {rates.shape}"
            )
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(rates))):
            raise TraceError(f"{self.name}: times and bandwidths must be finite")
        if not np.all(np.diff(times) > 0):
            raise TraceError(f"{self.name}: times must be strictly increasing")
        if np.any(rates < 0):
            raise TraceError(f"{self.name}: bandwidth must be >= 0")
        times.setflags(write=False)
        rates.setflags(write=False)
        object.__setattr__(self, "times_s", times)
        object.__setattr__(self, "bandwidth_bps", rates)

    @property
    def duration_s(self) -> float:
        """The period after which the trace repeats."""
        return float(self.times_s[-1] - self.times_s[0])

    @property
    def mean_bps(self) -> float:
        """Time-weighted mean rate over one period."""
        return float(np.dot(np.diff(self.times_s), self.bandwidth_bps[:-1]) / self.duration_s)

    def rate_at(self, t_s: float | np.ndarray) -> float | np.ndarray:
        """Rate in force at time ``t_s`` (trace time, wrapping around at the end)."""
        t0 = self.times_s[0]
        wrapped = t0 + np.mod(np.asarray(t_s, dtype=np.float64) - t0, self.duration_s)
        index = np.clip(np.searchsorted(self.times_s, wrapped, side="right") - 1, 0, self.times_s.size - 2)
        rates = self.bandwidth_bps[index]
        return float(rates) if np.ndim(rates) == 0 else rates


def load_trace(path: str | Path, mahimahi_bin_s: float = 0.1) -> BandwidthTrace:
    """Read a ``t_s Mbps`` or Mahimahi trace file (auto-detected); the trace is named after the file."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")
    rows = _read_rows(path)
    if len(rows[0][1]) == 1:
        return _from_mahimahi(path, rows, mahimahi_bin_s)
    if len(rows[0][1]) == 2:
        return _from_time_mbps(path, rows)
    raise TraceError(
        f"{path}:{rows[0][0]}: expected 't_s Mbps' (2 columns) or a Mahimahi timestamp (1 column), "
        f"got {len(rows[0][1])} columns"
    )


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every line; only trailing blank lines are allowed."""
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise TraceError(f"{path}: file is empty")
    rows = []
    width = len(lines[0].split())
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) != width:
            raise TraceError(f"{path}:{line_no}: ragged row, expected {width} columns, got {len(fields)}")
        rows.append((line_no, fields))
    return rows


def _from_time_mbps(path: Path, rows: list[tuple[int, list[str]]]) -> BandwidthTrace:
    times, rates = [], []
    for line_no, (t_text, mbps_text) in rows:
        try:
            t_s, mbps = float(t_text), float(mbps_text)
        except ValueError:
            raise TraceError(f"{path}:{line_no}: expected two numbers, got {t_text!r} {mbps_text!r}") from None
        if not (np.isfinite(t_s) and np.isfinite(mbps)):
            raise TraceError(f"{path}:{line_no}: time and bandwidth must be finite")
        if mbps < 0:
            raise TraceError(f"{path}:{line_no}: negative bandwidth {mbps} Mbps")
        if times and t_s <= times[-1]:
            raise TraceError(f"{path}:{line_no}: time {t_s} s does not increase (previous {times[-1]} s)")
        times.append(t_s)
        rates.append(mbps * 1e6)
    if len(times) < 2:
        raise TraceError(f"{path}: a trace needs at least 2 lines to span a duration")
    return BandwidthTrace(np.array(times), np.array(rates), path.name)


def _from_mahimahi(path: Path, rows: list[tuple[int, list[str]]], bin_s: float) -> BandwidthTrace:
    if not bin_s > 0:
        raise TraceError(f"{path}: mahimahi_bin_s must be > 0, got {bin_s}")
    stamps_ms = []
    for line_no, (text,) in rows:
        try:
            stamp = int(text)
        except ValueError:
            raise TraceError(f"{path}:{line_no}: expected an integer millisecond timestamp, got {text!r}") from None
        if stamp < 0:
            raise TraceError(f"{path}:{line_no}: negative timestamp {stamp} ms")
        if stamps_ms and stamp < stamps_ms[-1]:
            raise TraceError(f"{path}:{line_no}: timestamp {stamp} ms goes back in time (previous {stamps_ms[-1]})")
        stamps_ms.append(stamp)
    if stamps_ms[-1] <= 0:
        raise TraceError(f"{path}: a Mahimahi trace must end after 0 ms to have a period")
    bin_ms = bin_s * 1e3
    n_bins = int(np.ceil(stamps_ms[-1] / bin_ms - 1e-9))
    edges_s = np.append(np.arange(n_bins) * bin_s, stamps_ms[-1] / 1e3)
    bins = np.minimum(np.floor(np.asarray(stamps_ms) / bin_ms + 1e-9).astype(np.int64), n_bins - 1)
    opportunities = np.bincount(bins, minlength=n_bins)
    rates_bps = opportunities * MAHIMAHI_PACKET_BYTES * 8.0 / np.diff(edges_s)
    return BandwidthTrace(edges_s, np.append(rates_bps, rates_bps[-1]), path.name)


def load_trace_set(path_or_dir: str | Path, limit: int | None = None) -> list[BandwidthTrace]:
    """One trace file, or every trace in a directory sorted by file name (the first ``limit`` of them).

    A shared set's name (``train``, ``valid-fcc``, ``valid-norway``) that is not a local path reads that set.
    """
    path = Path(path_or_dir)
    if not path.exists() and str(path_or_dir) in TRACE_SETS:
        path = trace_set_dir(str(path_or_dir))
    if limit is not None and limit < 1:
        raise TraceError(f"{path}: limit must be >= 1, got {limit}")
    if path.is_file():
        return [load_trace(path)]
    if not path.is_dir():
        raise TraceError(f"{path}: trace file or directory not found")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")
    if not files:
        raise TraceError(f"{path}: directory holds no trace files")
    return [load_trace(p) for p in files[:limit]]


def default_traces() -> list[BandwidthTrace]:
    """The four FCC traces shipped with the package, taken from ``valid-fcc`` (see data/README.md)."""
    return load_trace_set(DEFAULT_TRACE_DIR)


def log_id(name: str) -> str:
    """The recording a trace file was cut from: FCC files are windows of one log (``test_fcc_trace_<id>_...``)."""
    match = re.match(r"test_fcc_trace_(\d+)_", name)
    return match.group(1) if match else name


def split_half(traces: list[BandwidthTrace], part: str) -> list[BandwidthTrace]:
    """One of two disjoint halves of a trace set, whole recordings to a side (windows of one log overlap).

    Recordings, sorted by id, alternate between ``select`` (model selection and tuning) and
    ``report`` (results); ``all`` returns every trace.
    """
    if part == "all":
        return list(traces)
    if part not in ("select", "report"):
        raise TraceError(f"part must be 'select', 'report' or 'all', got {part!r}")
    ids = sorted({log_id(t.name) for t in traces}, key=lambda i: (len(i), i))
    side = {i: ("select", "report")[k % 2] for k, i in enumerate(ids)}
    return [t for t in traces if side[log_id(t.name)] == part]


def data_root() -> Path:
    """The shared data folder: ``$TESTBED_DATA``, else ``shared/data`` beside the repository checkout."""
    env = os.environ.get("TESTBED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def trace_set_dir(name: str) -> Path:
    """Directory of one of the shared trace sets (``train``, ``valid-fcc``, ``valid-norway``).

    Raises a :class:`TraceError` that says how to point at the data when it is not there.
    """
    if name not in TRACE_SETS:
        raise TraceError(f"unknown trace set {name!r}; the sets are {', '.join(TRACE_SETS)}")
    path = data_root() / "traces" / name
    if not path.is_dir():
        raise TraceError(f"trace set {name!r} not found at {path}: set TESTBED_DATA to the folder holding traces/")
    return path


def constant_trace(mbps: float, duration_s: float = 60.0) -> BandwidthTrace:
    """A link of fixed rate, named ``constant-<mbps>mbps``."""
    if mbps < 0 or not duration_s > 0:
        raise TraceError(f"constant trace: need mbps >= 0 and duration_s > 0, got {mbps}, {duration_s}")
    return BandwidthTrace(np.array([0.0, duration_s]), np.full(2, mbps * 1e6), f"constant-{mbps:g}mbps")


def synthetic_trace(
    seed: int,
    duration_s: float = 60.0,
    min_mbps: float = 0.5,
    max_mbps: float = 6.0,
    min_hold_s: float = 1.0,
    max_hold_s: float = 10.0,
) -> BandwidthTrace:
    """Random levels, uniform in ``[min_mbps, max_mbps]``, each held a uniform ``[min_hold_s, max_hold_s]``.

    The last hold is cut at ``duration_s``. Same seed, same trace.
    """
    if not 0 <= min_mbps <= max_mbps:
        raise TraceError(f"synthetic trace: need 0 <= min_mbps <= max_mbps, got {min_mbps}, {max_mbps}")
    if not 0 < min_hold_s <= max_hold_s:
        raise TraceError(f"synthetic trace: need 0 < min_hold_s <= max_hold_s, got {min_hold_s}, {max_hold_s}")
    if not duration_s > 0:
        raise TraceError(f"synthetic trace: duration_s must be > 0, got {duration_s}")
    rng = np.random.default_rng(seed)
    starts = [0.0]
    while True:
        end = starts[-1] + rng.uniform(min_hold_s, max_hold_s)
        if end >= duration_s:
            break
        starts.append(end)
    levels_bps = rng.uniform(min_mbps, max_mbps, size=len(starts)) * 1e6
    return BandwidthTrace(np.append(starts, duration_s), np.append(levels_bps, levels_bps[-1]), f"synthetic-{seed}")
