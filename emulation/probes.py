"""Attach the C++ probes and copy their columns out as pandas tables.

Each column is a ``std::vector`` in the probe; it is copied to numpy in one
call (no per-element Python), so draining costs microseconds per thousand
samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_DTYPES = {
    "double": np.float64,
    "float": np.float32,
    "unsigned char": np.uint8,
    "unsigned int": np.uint32,
    "unsigned long": np.uint64,
}


def vector_to_numpy(vec, dtype) -> np.ndarray:
    """Copy a cppyy ``std::vector`` of a plain type into a new numpy array."""
    n = vec.size()
    view = vec.data()  # bound even when empty: the first call's JIT must not land inside a real-time run
    if n == 0:
        return np.zeros(0, dtype=dtype)
    view.reshape((n,))
    return np.frombuffer(view, dtype=dtype, count=n).copy()


class BottleneckProbe:
    """Per-packet sojourn and periodic queue samples of the bottleneck queue disc."""

    SAMPLE_COLUMNS = {
        "c_len_pkts": ("cLenPkts", np.uint32),
        "l_len_pkts": ("lLenPkts", np.uint32),
        "c_len_bytes": ("cLenBytes", np.uint32),
        "l_len_bytes": ("lLenBytes", np.uint32),
        "p_prime": ("pPrime", np.float64),
        "p_cl": ("pCL", np.float64),
        "p_c": ("pC", np.float64),
        "departed_bytes": ("departedBytes", np.uint64),
        "c_marks": ("cMarks", np.uint32),
        "l_marks": ("lMarks", np.uint32),
        "c_drops": ("cDrops", np.uint32),
        "l_drops": ("lDrops", np.uint32),
        "tail_drops": ("tailDrops", np.uint32),
    }

    def __init__(self, ns, queue_disc, interval_s: float):
        self.probe = ns.CreateObject[ns.QueueDiscProbe]()
        self.probe.Attach(queue_disc, ns.Seconds(interval_s))
        self._queue_parts: list[pd.DataFrame] = []
        self._sojourn_parts: list[pd.DataFrame] = []

    def drain(self) -> None:
        """Move what the probe holds into Python and clear it (bounded C++ memory).

        Only copies arrays (well under a millisecond): in real mode it runs inside the event loop.
        """
        p = self.probe
        samples = {"time_s": vector_to_numpy(p.sampleTime, np.float64)}
        for column, (member, dtype) in self.SAMPLE_COLUMNS.items():
            samples[column] = vector_to_numpy(getattr(p, member), dtype)
        self._queue_parts.append(samples)
        self._sojourn_parts.append({
            "time_s": vector_to_numpy(p.sojournTime, np.float64),
            "queue_id": vector_to_numpy(p.sojournQueue, np.uint8),
            "sojourn_ms": vector_to_numpy(p.sojournMs, np.float32),
        })
        p.Clear()

    @staticmethod
    def _joined(parts: list[dict]) -> dict[str, np.ndarray]:
        return {column: np.concatenate([part[column] for part in parts]) for column in parts[0]}

    def queue_table(self) -> pd.DataFrame:
        self.drain()
        return pd.DataFrame(self._joined(self._queue_parts))

    def sojourn_table(self) -> pd.DataFrame:
        columns = self._joined(self._sojourn_parts)
        return pd.DataFrame({
            "time_s": columns["time_s"],
            "queue": pd.Categorical.from_codes(columns["queue_id"].astype(np.int8), categories=["C", "L"]),
            "sojourn_ms": columns["sojourn_ms"],
        })


class GoodputProbe:
    """Per-flow bytes received, sampled every interval, plus first/last receive times."""

    def __init__(self, ns, sinks: list, flow_names: list[str], interval_s: float):
        self.flow_names = flow_names
        self.probe = ns.CreateObject[ns.FlowGoodputProbe]()
        for sink in sinks:
            self.probe.AddSink(sink)
        self.probe.Start(ns.Seconds(interval_s))
        self.interval_s = interval_s

    def flows_table(self) -> pd.DataFrame:
        p = self.probe
        times = vector_to_numpy(p.sampleTime, np.float64)
        n_flows = len(self.flow_names)
        rx = vector_to_numpy(p.sampleRxBytes, np.uint64).reshape(len(times), n_flows) if n_flows else None
        if not n_flows or not len(times):
            return pd.DataFrame({"time_s": [], "flow": [], "rx_bytes": [], "goodput_bps": []})
        return pd.DataFrame(
            {
                "time_s": np.repeat(times, n_flows),
                "flow": np.tile(np.asarray(self.flow_names, dtype=object), len(times)),
                "rx_bytes": rx.ravel(),
                "goodput_bps": rx.ravel() * 8.0 / self.interval_s,
            }
        )

    def totals(self) -> pd.DataFrame:
        p = self.probe
        return pd.DataFrame(
            {
                "flow": self.flow_names,
                "rx_bytes": vector_to_numpy(p.totalRxBytes, np.uint64),
                "first_rx_s": vector_to_numpy(p.firstRxTime, np.float64),
                "last_rx_s": vector_to_numpy(p.lastRxTime, np.float64),
            }
        )
