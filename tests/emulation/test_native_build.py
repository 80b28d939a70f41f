"""The native build: cached by content, rebuilt on change, compiler errors surfaced."""

from __future__ import annotations

import shutil

import pytest

from emulation.native import build


def test_build_is_cached_by_content(monkeypatch, tmp_path):
    first = build.build()
    assert first.exists()
    assert build.build() == first  # no rebuild: same key, same file


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
