"""Atomic writes into a run directory (docs/run-directory.md).

A reader (a report, a resumed sweep) must never see half a table: every file
is written beside its final name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import yaml


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _clean(value):
    """JSON has no NaN: write null instead (readers treat it as missing)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    return value


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_yaml(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    path = Path(path)
    tmp = _tmp(path)
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
