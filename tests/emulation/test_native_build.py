"""The native build: cached by content, rebuilt on change, compiler errors surfaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emulation.native import build


def _count_compiles(monkeypatch) -> list[Path]:
    compiled: list[Path] = []
    real = build._compile_and_link

    def counting(out: Path) -> None:
        compiled.append(out)
        real(out)

    monkeypatch.setattr(build, "_compile_and_link", counting)
    return compiled


def test_an_unchanged_tree_is_not_rebuilt(monkeypatch):
    compiled = _count_compiles(monkeypatch)
    first = build.build()
    assert first.exists()
    assert build.build() == first
    assert compiled == []  # the session's models were built already: no compiler run


def test_a_source_change_triggers_a_rebuild(monkeypatch, tmp_path):
    # A tree of one small model, so the rebuild is quick; the key covers every .cc and .h byte.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("python-event.h", "python-event.cc"):
        shutil.copy(build.SOURCE_DIR / name, src / name)
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    compiled = _count_compiles(monkeypatch)
    first = build.build()
    assert len(compiled) == 1 and first.exists()
    assert build.build() == first and len(compiled) == 1
    header = src / "python-event.h"
    header.write_text(header.read_text() + "\n// a changed comment is a changed source\n")
    second = build.build()
    assert len(compiled) == 2 and second != first and second.exists()


def test_compile_error_carries_the_compiler_message(monkeypatch, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(build.SOURCE_DIR, src, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (src / "broken-model.cc").write_text('#include "ns3/object.h"\nint broken( { return 0; }\n')
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.NativeBuildError) as err:
        build.build()
    assert "broken-model.cc" in str(err.value)
    assert "error" in str(err.value)
