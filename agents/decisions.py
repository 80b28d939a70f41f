"""``decisions.parquet``: one row per decision of every policy (acting and shadow).

The schema is the run directory's contract (docs/run-directory.md). Rows are
written incrementally, a row group every ``rows_per_group`` rows, to a hidden
temporary file that becomes ``decisions.parquet`` on close, so a reader never
sees half a file. SIGTERM is turned into ``SystemExit`` (SIGINT already raises
KeyboardInterrupt) and open logs are closed at interpreter exit, so a run that
is stopped still leaves a valid file with everything decided so far; inside
:func:`stop_signals_deferred` (a row-group write, an answer and its row) both
wait until the block is done.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("control_point", pa.string()),
        ("step", pa.int64()),
        ("sim_time_s", pa.float64()),
        ("policy", pa.string()),
        ("role", pa.string()),
        ("obs", pa.list_(pa.float64())),
        ("action", pa.list_(pa.float64())),
        ("reward", pa.float64()),
        ("decision_ms", pa.float64()),
        ("fallback", pa.bool_()),
        ("done", pa.bool_()),
        ("info", pa.string()),
    ]
)
ROLES = ("acting", "shadow")
_FLOAT_LISTS = ("obs", "action")

_open_logs: weakref.WeakSet[DecisionLog] = weakref.WeakSet()
_handlers_installed = False


def _close_open_logs() -> None:
    for log in list(_open_logs):
        log.close()


#: how deep the main thread is in stop_signals_deferred(), and the stop signals that arrived meanwhile
_defer_depth = 0
_deferred_signals: list[int] = []


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _stop(signum: int, _frame: object) -> None:
    """Handler of SIGTERM and SIGINT: unwind now, or at the end of a ``stop_signals_deferred`` block."""
    if _defer_depth:
        _deferred_signals.append(signum)
        return
    _raise_for(signum)


def _install_handlers() -> None:
    """Once per process: close logs at exit and let SIGTERM unwind (so ``with``/``finally`` close them).

    Python runs signal handlers in the main thread whichever thread the signal reaches (zmq's I/O
    threads included), so a handler that defers (:func:`stop_signals_deferred`) is what keeps a block
    whole; masking the signal in the main thread would not.
    """
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_close_open_logs)
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _stop)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _stop)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT that arrive inside the block take effect when it ends (once a DecisionLog exists)."""
    global _defer_depth
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers run in the main thread only: nothing here can be cut short by one
        return
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if not _defer_depth and _deferred_signals:
            signum = _deferred_signals[0]
            _deferred_signals.clear()
            _raise_for(signum)


def warm_up() -> None:
    """Pay pyarrow's one-time start-up cost now (its first array conversion imports pandas, ~0.4 s).

    Called before a simulation connects, so the first row-group flush does not
    stall a control tick.
    """
    pa.array([], type=pa.float64())


class DecisionLog:
    """Writer of one control point's ``decisions.parquet``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        control_point: str,
        control: str,
        obs_fields: Sequence[str],
        acting_policy: str,
        rows_per_group: int = 256,
    ):
        if rows_per_group < 1:
            raise ValueError(f"rows_per_group must be >= 1, got {rows_per_group}")
        self.path = Path(path)
        self.control_point = control_point
        self.rows_per_group = rows_per_group
        metadata = {
            "obs_fields": json.dumps(list(obs_fields)),
            "control_point": control_point,
            "control": control,
            "acting_policy": acting_policy,
        }
        self.schema = SCHEMA.with_metadata(metadata)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        warm_up()
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp_path, self.schema)
        # Whole rows as tuples: appending one is atomic with respect to signal handlers.
        self._rows: list[tuple[Any, ...]] = []
        self.rows_written = 0
        _install_handlers()
        _open_logs.add(self)

    def append(
        self,
        *,
        step: int,
        sim_time_s: float,
        policy: str,
        role: str,
        obs: Sequence[float] | np.ndarray,
        action: Sequence[float] | np.ndarray,
        reward: float,
        decision_ms: float,
        fallback: bool = False,
        done: bool = False,
        info: str = "",
    ) -> None:
        if self._writer is None:
            raise RuntimeError(f"decision log {self.path} is closed")
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        obs_arr = np.asarray(obs, dtype=np.float64).ravel()
        action_arr = np.asarray(action, dtype=np.float64).ravel()
        row = (self.control_point, int(step), float(sim_time_s), policy, role, obs_arr, action_arr,
               float(reward), float(decision_ms), bool(fallback), bool(done), info)
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if self._writer is None or not self._rows:
            return
        # A signal arriving mid-write must not run a handler that closes this writer under us.
        with stop_signals_deferred():
            rows, self._rows = self._rows, []
            self._writer.write_table(_rows_to_table(rows, self.schema))
            self.rows_written += len(rows)

    def close(self) -> Path:
        """Flush, finish the file and move it into place; idempotent."""
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None
            os.replace(self._tmp_path, self.path)
            _open_logs.discard(self)
        return self.path

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _rows_to_table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    arrays = []
    for field, values in zip(schema, columns, strict=True):
        if field.name in _FLOAT_LISTS:
            lengths = np.fromiter((len(v) for v in values), dtype=np.int32, count=len(values))
            offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)]).astype(np.int32)
            flat = np.concatenate(values) if values else np.zeros(0)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float64())))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
