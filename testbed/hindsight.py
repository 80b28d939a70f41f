"""A whole-session clairvoyant ABR teacher: dynamic programming over the true link to the video's end.

The 5-chunk clairvoyant planner (:class:`agents.abr.ClairvoyantMPC`) sees the future link but not
past its horizon: a plan that ends with an empty buffer costs it nothing, so it values buffer only
for the next 20 s. This teacher values every state by the best QoE_lin still collectable to the
last chunk. At a session's first decision it runs a backward recursion over (chunk, last quality,
buffer, link time) on grids (``buffer_step_s``, ``time_step_s``), walking the simulator's own
buffer rules (RTT, buffer cap and the waits it forces) on the true link; each decision then scores
every quality exactly for the next chunk and by the interpolated value of the state it leads to
after. On the validation traces its QoE is the offline optimum within grid error (a forward search
over the same states finds the same value), 13-24 % above RobustMPC, where the 5-chunk planner
is 3-15 % above it. Like that planner it needs the future, so it is a teacher in the chunk-level
simulator only (``see_playback``), never a deployable policy.
"""

from __future__ import annotations

import numpy as np

from agents.protocol.control_points import AbrObservation
from agents.protocol.qoe import QOE_LIN_REBUFFER_PENALTY, SMOOTHNESS_PENALTY


class HindsightDP:
    """Whole-session dynamic programming on the true link (see the module docstring)."""

    name = "hindsight"
    control = "abr"

    def __init__(self, buffer_step_s: float = 0.5, time_step_s: float = 2.0) -> None:
        if not (buffer_step_s > 0 and time_step_s > 0):
            raise ValueError(f"grid steps must be > 0 s, got {buffer_step_s}, {time_step_s}")
        self.buffer_step_s = float(buffer_step_s)
        self.time_step_s = float(time_step_s)
        self.rebuffer_penalty = QOE_LIN_REBUFFER_PENALTY
        self.smoothness_penalty = SMOOTHNESS_PENALTY
        self.last_action_scores: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        self._playback = None
        self._values: np.ndarray | None = None  # [chunk, quality, buffer, time]: value to go after the chunk
        self.last_action_scores = None

    def see_playback(self, playback) -> None:
        """The live session (:class:`testbed.chunksim.Playback`); the simulator calls it before every ``act``."""
        self._playback = playback

    # -- the backward recursion -------------------------------------------------------------------

    def _anchor(self) -> None:
        pb = self._playback
        self._future = pb.cursor.future(pb.rtt_s, pb.buffer_cap_s)
        self._first_chunk = pb.chunk
        self._clock0_s = pb.clock_s
        m = pb.manifest
        self._rates_mbps = np.asarray(m.bitrates_bps, dtype=np.float64) / 1e6
        self._sizes = np.asarray(m.chunk_bytes, dtype=np.float64)
        left = m.n_chunks - pb.chunk
        # link time the slowest path could take: every chunk left at the lowest quality, plus a full drain
        slowest_s = float(self._future.finish_s(np.array([0.0]), np.array([self._sizes[0, pb.chunk:].sum()]))[0])
        horizon_s = slowest_s + left * (m.chunk_duration_s + pb.rtt_s) + pb.buffer_cap_s
        self._buffers = np.arange(0.0, pb.buffer_cap_s + self.buffer_step_s / 2, self.buffer_step_s)
        self._times = np.arange(0.0, horizon_s + self.time_step_s, self.time_step_s)
        n_levels = self._rates_mbps.size
        values = np.zeros((m.n_chunks, n_levels, self._buffers.size, self._times.size), dtype=np.float32)
        switch = np.abs(self._rates_mbps[:, None] - self._rates_mbps[None, :])  # [last, next]
        b, t = self._buffers[:, None], self._times[None, :]
        for chunk in range(m.n_chunks - 2, pb.chunk - 1, -1):
            # values[chunk]: after chunk `chunk` was played (its quality is the "last" one), before chunk + 1
            nxt = chunk + 1
            gain = np.stack([self._step_value(nxt, a, b, t, values) for a in range(n_levels)])  # [a, B, T]
            values[chunk] = np.max(gain[None] - self.smoothness_penalty * switch[:, :, None, None], axis=1)
        self._values = values

    def _step_value(self, chunk: int, quality: int, buffer_s, time_s, values: np.ndarray) -> np.ndarray:
        """QoE_lin of fetching ``chunk`` at ``quality`` from (buffer, link time), plus the value after, less
        the smoothness term (which depends on the quality before)."""
        pb, future = self._playback, self._future
        n_chunks = self._sizes.shape[1]
        time_s = np.broadcast_to(time_s, np.broadcast_shapes(np.shape(buffer_s), np.shape(time_s)))
        done_s = future.finish_s(time_s, np.full(time_s.shape, self._sizes[quality, chunk]))
        delay_s = done_s - time_s + pb.rtt_s
        rebuffer_s = np.maximum(delay_s - buffer_s, 0.0)
        after_s = np.maximum(buffer_s - delay_s, 0.0) + pb.manifest.chunk_duration_s
        if chunk + 1 < n_chunks:
            wait_s = np.ceil(np.maximum(after_s - pb.buffer_cap_s, 0.0) / future.drain_step_s) * future.drain_step_s
            after_s = after_s - wait_s
            done_s = done_s + wait_s
        gain = self._rates_mbps[quality] - self.rebuffer_penalty * rebuffer_s
        if chunk + 1 < n_chunks:
            gain = gain + self._interpolate(values[chunk, quality], after_s, done_s)
        return gain

    def _interpolate(self, table: np.ndarray, buffer_s: np.ndarray, time_s: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of a [buffer, time] table, clamped to its grid."""
        fb = np.clip(buffer_s / self.buffer_step_s, 0.0, self._buffers.size - 1.0)
        ft = np.clip(time_s / self.time_step_s, 0.0, self._times.size - 1.0)
        b0 = np.minimum(fb.astype(np.int64), self._buffers.size - 2)
        t0 = np.minimum(ft.astype(np.int64), self._times.size - 2)
        wb, wt = fb - b0, ft - t0
        return ((1 - wb) * (1 - wt) * table[b0, t0] + wb * (1 - wt) * table[b0 + 1, t0]
                + (1 - wb) * wt * table[b0, t0 + 1] + wb * wt * table[b0 + 1, t0 + 1])

    # -- deciding ------------------------------------------------------------------------------------

    def action_scores(self, obs: AbrObservation) -> np.ndarray:
        """QoE_lin to the video's end of each quality for the next chunk, the best continuation after."""
        pb = self._playback
        if pb is None:
            raise RuntimeError("HindsightDP acts only where the simulator shows it the session (see_playback)")
        if self._values is None:
            self._anchor()
        # link time since the anchor: the clock less each chunk's request RTT (the link idles through it)
        time_s = np.array(pb.clock_s - self._clock0_s - pb.rtt_s * (pb.chunk - self._first_chunk))
        buffer_s = np.array(pb.buffer_s)
        scores = np.array([float(self._step_value(pb.chunk, a, buffer_s, time_s, self._values))
                           for a in range(obs.n_levels)])
        switch = np.abs(self._rates_mbps - self._rates_mbps[obs.last_quality])
        return scores - self.smoothness_penalty * switch

    def act(self, obs: AbrObservation) -> int:
        self.last_action_scores = self.action_scores(obs)
        return int(np.argmax(self.last_action_scores))
