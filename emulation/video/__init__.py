"""Video content and network traces shared by the packet-level client and the chunk-level simulator.

Pure numpy: nothing here imports ns-3, so ``testbed.chunksim`` can use it
without a simulator.
"""

from emulation.video.manifest import (
    ManifestError,
    VideoManifest,
    default_manifest,
    load_manifest,
    synthetic_manifest,
)
from emulation.video.traces import (
    TRACE_SETS,
    BandwidthTrace,
    TraceError,
    constant_trace,
    default_traces,
    load_trace,
    load_trace_set,
    synthetic_trace,
    trace_set_dir,
)

__all__ = [
    "TRACE_SETS",
    "BandwidthTrace",
    "ManifestError",
    "TraceError",
    "VideoManifest",
    "constant_trace",
    "default_manifest",
    "default_traces",
    "load_manifest",
    "load_trace",
    "load_trace_set",
    "synthetic_manifest",
    "synthetic_trace",
    "trace_set_dir",
]
