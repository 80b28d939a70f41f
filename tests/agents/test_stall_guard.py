"""The stall guard lowers a learned ABR choice only when its chunk would not arrive before the buffer empties."""

from __future__ import annotations

import numpy as np
import pytest

from agents.abr.guard import StallGuard
from agents.protocol.control_points import ABR_HISTORY, ABR_HORIZON, AbrObservation

RATES_BPS = np.array([300e3, 750e3, 1200e3, 1850e3, 2850e3, 4300e3])
CHUNK_S = 4.0


def _obs(chunk: int, buffer_s: float, throughputs_bps: list[float]) -> AbrObservation:
    history = np.zeros(ABR_HISTORY)
    if throughputs_bps:
        history[-len(throughputs_bps):] = throughputs_bps
    sizes = np.tile(RATES_BPS * CHUNK_S / 8, (ABR_HORIZON, 1))
    return AbrObservation(chunk_index=chunk, chunks_total=48, last_quality=2, buffer_s=buffer_s, rebuffer_s=0.0,
                          chunk_duration_s=CHUNK_S, throughput_bps=history, download_time_s=np.where(history > 0, 1.0, 0.0),
                          bitrates_bps=RATES_BPS, future_chunk_bytes=sizes)


def test_no_estimate_no_change():
    guard = StallGuard(margin_s=1.0)
    assert guard.limit(_obs(0, 0.0, []), 5) == 5 and guard.lowered == 0


def test_a_choice_that_arrives_in_time_stands_and_one_that_would_stall_is_lowered():
    guard = StallGuard(margin_s=1.0)
    # 2 Mbps measured steadily: a 4 s chunk at level q takes 2 * rate_q / 2 Mbps seconds
    assert guard.limit(_obs(3, 10.0, [2e6] * 3), 5) == 5  # 8.6 s < 10 - 1
    # with 5 s of buffer only levels whose chunk takes <= 4 s pass: 1850 kbps takes 3.7 s, 2850 kbps 5.7 s
    assert guard.limit(_obs(4, 5.0, [2e6] * 4), 5) == 3
    assert guard.lowered == 1
    # never raised: a low choice stays low
    assert guard.limit(_obs(5, 30.0, [2e6] * 5), 1) == 1


def test_nothing_in_time_means_the_lowest_quality():
    guard = StallGuard(margin_s=1.0)
    assert guard.limit(_obs(3, 0.5, [2e6] * 3), 4) == 0


def test_past_errors_make_the_estimate_robust():
    """One chunk at half the throughput of a steady run: the harmonic mean and RobustMPC's discount by the
    error it made lower the estimate, so the same buffer admits a lower level."""
    steady, robust = StallGuard(margin_s=0.0), StallGuard(margin_s=0.0)
    for k in range(1, 5):
        steady.limit(_obs(k, 20.0, [2e6] * k), 0)
    history = [2e6, 2e6, 2e6, 1e6, 2e6]
    for k in range(1, 6):
        robust.limit(_obs(k, 20.0, history[:k]), 0)
    assert robust.limit(_obs(6, 6.0, history), 5) < steady.limit(_obs(5, 6.0, [2e6] * 5), 5)


def test_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="margin"):
        StallGuard(margin_s=-1.0)
