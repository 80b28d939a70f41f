"""Video manifests: the bitrate ladder and the byte size of every chunk.

Pure numpy so that the packet-level video client (emulation) and the
chunk-level simulator (testbed) read the same video the same way, and both
build the ABR observation through :meth:`VideoManifest.abr_observation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.protocol.control_points import ABR_HISTORY, ABR_HORIZON, AbrObservation

#: The standard Pensieve ladder of ``video1``.
DEFAULT_BITRATES_KBPS = (300, 750, 1200, 1850, 2850, 4300)
DEFAULT_DATA_DIR = Path(__file__).parent / "data"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and line at fault."""


@dataclass(frozen=True, eq=False)
class VideoManifest:
    """A video as an ABR sees it.

    ``chunk_bytes[q, j]`` is the size of chunk ``j`` at quality ``q``; quality 0
    is the lowest bitrate. Arrays are made read-only so a shared manifest cannot
    be changed under another client's feet.
    """

    bitrates_bps: np.ndarray
    chunk_duration_s: float
    chunk_bytes: np.ndarray
    name: str = "video"

    def __post_init__(self) -> None:
        rates = np.array(self.bitrates_bps, dtype=np.float64)
        sizes = np.array(self.chunk_bytes, dtype=np.int64)
        if rates.ndim != 1 or rates.size == 0:
            raise ManifestError(f"{self.name}: bitrates_bps must be a non-empty 1-D array, got shape {rates.shape}")
        if not np.all(rates > 0):
            raise ManifestError(f"{self.name}: bitrates must be positive, got {rates.tolist()}")
        if rates.size > 1 and not np.all(np.diff(rates) > 0):
            raise ManifestError(f"{self.name}: bitrates must be strictly ascending, got {rates.tolist()}")
        if not self.chunk_duration_s > 0:
            raise ManifestError(f"{self.name}: chunk_duration_s must be > 0, got {self.chunk_duration_s}")
        if sizes.ndim != 2 or sizes.shape[0] != rates.size or sizes.shape[1] == 0:
            raise ManifestError(
                f"{self.name}: chunk_bytes must have shape [levels={rates.size}, chunks>0], got {sizes.shape}"
            )
        if not np.all(sizes > 0):
            raise ManifestError(f"{self.name}: every chunk must have a positive byte count")
        rates.setflags(write=False)
        sizes.setflags(write=False)
        object.__setattr__(self, "bitrates_bps", rates)
        object.__setattr__(self, "chunk_bytes", sizes)
        object.__setattr__(self, "chunk_duration_s", float(self.chunk_duration_s))

    @property
    def n_levels(self) -> int:
        return int(self.bitrates_bps.size)

    @property
    def n_chunks(self) -> int:
        return int(self.chunk_bytes.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_chunks * self.chunk_duration_s

    def future_chunk_bytes(self, chunk_index: int, horizon: int = ABR_HORIZON) -> np.ndarray:
        """Sizes ``[h, q]`` of chunks ``chunk_index .. chunk_index + horizon - 1``, zero past the end."""
        out = np.zeros((horizon, self.n_levels), dtype=np.float64)
        upcoming = self.chunk_bytes[:, chunk_index : chunk_index + horizon].T
        out[: upcoming.shape[0]] = upcoming
        return out

    def abr_observation(
        self,
        chunk_index: int,
        last_quality: int,
        buffer_s: float,
        rebuffer_s: float,
        throughputs_bps: Sequence[float] | np.ndarray,
        download_times_s: Sequence[float] | np.ndarray,
    ) -> AbrObservation:
        """The observation a client hands its ABR before requesting ``chunk_index``.

        ``throughputs_bps`` and ``download_times_s`` are the client's full
        per-chunk histories, oldest first; the last ``ABR_HISTORY`` are kept and
        zero-padded at the front, as the observation layout requires.
        """
        return AbrObservation(
            chunk_index=int(chunk_index),
            chunks_total=self.n_chunks,
            last_quality=int(last_quality),
            buffer_s=float(buffer_s),
            rebuffer_s=float(rebuffer_s),
            chunk_duration_s=self.chunk_duration_s,
            throughput_bps=_last_padded(throughputs_bps, ABR_HISTORY),
            download_time_s=_last_padded(download_times_s, ABR_HISTORY),
            bitrates_bps=self.bitrates_bps.copy(),
            future_chunk_bytes=self.future_chunk_bytes(chunk_index),
        )


def _last_padded(values: Sequence[float] | np.ndarray, length: int) -> np.ndarray:
    tail = np.asarray(values, dtype=np.float64)[-length:] if len(values) else np.zeros(0)
    return np.concatenate([np.zeros(length - tail.size), tail])


def load_manifest(
    directory: str | Path,
    bitrates_kbps: Sequence[float] = DEFAULT_BITRATES_KBPS,
    chunk_duration_s: float = 4.0,
    n_chunks: int = 48,
    name: str | None = None,
) -> VideoManifest:
    """Read Pensieve-style ``video_size_<level>`` files (one integer byte count per line, line j = chunk j).

    Files may hold more than ``n_chunks`` lines (``video1`` has 49); the first
    ``n_chunks`` are used, but every level must have the same number of lines.
    """
    directory = Path(directory)
    rates = np.asarray(bitrates_kbps, dtype=np.float64) * 1e3
    if rates.size > 1 and not np.all(np.diff(rates) > 0):
        raise ManifestError(f"{directory}: bitrates_kbps must be strictly ascending, got {list(bitrates_kbps)}")
    if n_chunks < 1:
        raise ManifestError(f"{directory}: n_chunks must be >= 1, got {n_chunks}")
    if not directory.is_dir():
        raise ManifestError(f"{directory}: video directory not found")
    levels = [_read_sizes(directory / f"video_size_{q}") for q in range(rates.size)]
    counts = {f"video_size_{q}": len(sizes) for q, sizes in enumerate(levels)}
    if len(set(counts.values())) > 1:
        raise ManifestError(f"{directory}: levels have different chunk counts (ragged rows): {counts}")
    if len(levels[0]) < n_chunks:
        raise ManifestError(f"{directory / 'video_size_0'}: {len(levels[0])} chunks (lines), need n_chunks={n_chunks}")
    sizes = np.array([level[:n_chunks] for level in levels], dtype=np.int64)
    return VideoManifest(rates, chunk_duration_s, sizes, name or directory.name)


def _read_sizes(path: Path) -> list[int]:
    if not path.is_file():
        raise ManifestError(f"{path}: chunk size file not found")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ManifestError(f"{path}: file is empty")
    sizes = []
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        try:
            size = int(text)
        except ValueError:
            raise ManifestError(f"{path}:{line_no}: expected one integer byte count, got {text!r}") from None
        if size <= 0:
            raise ManifestError(f"{path}:{line_no}: chunk size must be positive, got {size}")
        sizes.append(size)
    return sizes


def default_manifest() -> VideoManifest:
    """The Pensieve ``video1`` shipped with the package (6 levels, 48 chunks of 4 s)."""
    return load_manifest(DEFAULT_DATA_DIR / "video1")


def synthetic_manifest(
    bitrates_kbps: Sequence[float] = DEFAULT_BITRATES_KBPS,
    chunk_duration_s: float = 4.0,
    n_chunks: int = 48,
    variability: float = 0.1,
    seed: int = 0,
) -> VideoManifest:
    """A seeded video whose chunk sizes scatter around ``bitrate * duration / 8``.

    Each chunk gets one factor drawn uniformly from ``[1 - variability,
    1 + variability]`` shared by all levels, as scene complexity is, so sizes
    stay ordered across levels.
    """
    if not 0.0 <= variability < 1.0:
        raise ManifestError(f"synthetic manifest: variability must be in [0, 1), got {variability}")
    if n_chunks < 1:
        raise ManifestError(f"synthetic manifest: n_chunks must be >= 1, got {n_chunks}")
    rates = np.asarray(bitrates_kbps, dtype=np.float64) * 1e3
    factors = np.random.default_rng(seed).uniform(1.0 - variability, 1.0 + variability, size=n_chunks)
    nominal_bytes = rates * chunk_duration_s / 8.0
    sizes = np.maximum(np.rint(nominal_bytes[:, None] * factors[None, :]), 1).astype(np.int64)
    return VideoManifest(rates, chunk_duration_s, sizes, f"synthetic-{seed}")
