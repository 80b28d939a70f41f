"""Synthetic ``decisions.parquet`` files with the documented columns and metadata, for pool and training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agents.decisions import SCHEMA
from agents.protocol.control_points import AbrObservation, AqmObservation

N_LEVELS = 4
BITRATES_BPS = np.array([300e3, 750e3, 1850e3, 4300e3])


def write_decisions(path: Path, control: str, obs_fields: list[str], rows: list[dict], acting: str = "expert") -> Path:
    """Write rows (dicts with control_point, step, policy, role, obs, action, reward, done) as decisions.parquet."""
    control_point = rows[0]["control_point"]
    columns = {name: [] for name in SCHEMA.names}
    for row in rows:
        full = {"sim_time_s": 0.1 * row["step"], "decision_ms": 1.0, "fallback": False, "info": "{}", **row}
        for name in SCHEMA.names:
            value = full[name]
            columns[name].append([float(v) for v in value] if name in ("obs", "action") else value)
    table = pa.table(columns, schema=SCHEMA)
    metadata = {
        "obs_fields": json.dumps(obs_fields),
        "control_point": control_point,
        "control": control,
        "acting_policy": acting,
    }
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def expert_quality(buffer_s: float) -> int:
    """The synthetic expert's rule: quality grows with the buffer (learnable from the buffer token)."""
    return int(np.clip(buffer_s // 5.0, 0, N_LEVELS - 1))


def abr_rows(
    n_steps: int, seed: int, control_point: str = "abr-0", shadow: bool = False, episodes: int = 1
) -> list[dict]:
    """Acting rows (and optionally a shadow policy's) of ABR episodes following :func:`expert_quality`."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(episodes):
        quality = 0
        for step in range(n_steps):
            buffer_s = float(rng.uniform(0, 20))
            obs = AbrObservation(
                chunk_index=step,
                chunks_total=n_steps,
                last_quality=quality,
                buffer_s=buffer_s,
                rebuffer_s=0.0,
                chunk_duration_s=4.0,
                throughput_bps=rng.uniform(1e5, 5e6, 8),
                download_time_s=rng.uniform(0.1, 4.0, 8),
                bitrates_bps=BITRATES_BPS,
                future_chunk_bytes=np.outer(np.ones(5), BITRATES_BPS * 4 / 8) * rng.uniform(0.8, 1.2, (5, N_LEVELS)),
            )
            reward = float(BITRATES_BPS[quality] / 1e6) if step else 0.0
            action = expert_quality(buffer_s)
            done = step == n_steps - 1
            base = {
                "control_point": control_point,
                "step": step,
                "obs": obs.to_vector(),
                "reward": reward,
                "done": done,
            }
            rows.append({**base, "policy": "expert", "role": "acting", "action": [action]})
            if shadow:
                rows.append({**base, "policy": "lowest", "role": "shadow", "action": [0]})
            quality = action
    return rows


def aqm_rows(n_steps: int, seed: int, control_point: str = "aqm") -> list[dict]:
    """Acting rows of one AQM episode whose controller logs continuous p' values."""
    rng = np.random.default_rng(seed)
    rows, p_prime = [], 0.0
    for step in range(n_steps):
        qdelay = float(rng.uniform(0, 0.05))
        obs = AqmObservation(
            qdelay_s=qdelay,
            c_sojourn_s=qdelay,
            l_sojourn_s=qdelay / 10,
            c_len_pkts=float(rng.integers(0, 100)),
            l_len_pkts=float(rng.integers(0, 20)),
            c_len_bytes=float(rng.integers(0, 150_000)),
            l_len_bytes=float(rng.integers(0, 30_000)),
            c_arrival_bps=float(rng.uniform(1e6, 1e8)),
            l_arrival_bps=float(rng.uniform(1e6, 1e8)),
            departure_bps=1e8,
            utilisation=float(rng.uniform(0.5, 1.0)),
            c_drops=float(rng.integers(0, 5)),
            c_marks=float(rng.integers(0, 50)),
            l_marks=float(rng.integers(0, 500)),
            l_drops=0.0,
            tail_drops=0.0,
            p_prime=p_prime,
            interval_s=0.016,
        )
        p_prime = float(min(1.0, qdelay * 4))
        rows.append(
            {
                "control_point": control_point,
                "step": step,
                "policy": "pi2",
                "role": "acting",
                "obs": obs.to_vector(),
                "action": [p_prime],
                "reward": -qdelay,
                "done": step == n_steps - 1,
            }
        )
    return rows


def abr_fields() -> list[str]:
    return AbrObservation.field_names(N_LEVELS)


def aqm_fields() -> list[str]:
    return AqmObservation.field_names()
