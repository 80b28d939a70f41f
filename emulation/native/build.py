"""Compile our C++ ns-3 models against the wheel's headers and load them.

The shared library is cached under a key made of the sources, the flags, the
compiler and the ns-3 version, so a change to any ``.cc``/``.h`` here triggers
a rebuild and an unchanged tree loads in milliseconds. Concurrent processes
(a sweep starting many simulations) serialise on a file lock and reuse the
first build. A compile error surfaces as ``NativeBuildError`` carrying the
compiler's own message.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emulation.ns3_loader import DEFAULT_MODULES, NS3_VERSION, load_ns3, ns3_prefix

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY_NAME = "libtestbed-native.so"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = (
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-DNS3_BUILD_PROFILE_RELEASE",
    "-DNS3_LOG_ENABLE",
    "-DNS3_ASSERT_ENABLE",
    "-D__LINUX__",
    "-D_GLIBCXX_USE_CXX11_ABI=1",
    "-Wall",
)
LINK_MODULES = ("core", "network", "internet", "traffic-control", "applications", "point-to-point")


class NativeBuildError(RuntimeError):
    """The C++ models failed to compile or link; the message holds the compiler output."""


def cache_root() -> Path:
    """The testbed's cache folder: ``$TESTBED_CACHE``, else ``~/.cache/l4s-testbed``.

    ``llm.backbone.cache_root`` reads the same folder the same way; the two stay separate because
    emulation may not import llm and llm imports nothing of the project (a test keeps them equal).
    """
    root = os.environ.get("TESTBED_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "l4s-testbed"


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cc"))


def headers() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.h"))


def _compiler_version() -> str:
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError) as exc:
        raise NativeBuildError(f"C++ compiler '{CXX}' not usable: {exc}") from exc


def build_key() -> str:
    digest = hashlib.sha256()
    for path in sources() + headers():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(CXXFLAGS + LINK_MODULES).encode())
    digest.update(_compiler_version().encode())
    digest.update(NS3_VERSION.encode())
    digest.update(str(ns3_prefix()).encode())
    return digest.hexdigest()[:16]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NativeBuildError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")


def _compile_and_link(out: Path) -> None:
    prefix = ns3_prefix()
    include = f"-I{prefix / 'include'}"
    objdir = Path(tempfile.mkdtemp(prefix="native-obj-", dir=out.parent))
    try:
        def compile_one(src: Path) -> Path:
            obj = objdir / (src.stem + ".o")
            _run([CXX, *CXXFLAGS, include, f"-I{SOURCE_DIR}", "-c", str(src), "-o", str(obj)], f"compiling {src.name}")
            return obj

        with ThreadPoolExecutor(max_workers=max(1, min(len(sources()), os.cpu_count() or 1))) as pool:
            objects = list(pool.map(compile_one, sources()))
        libdir = prefix / "lib64"
        libs = [f"-lns{NS3_VERSION}-{m}" for m in LINK_MODULES]
        tmp_lib = out.with_suffix(".tmp")
        _run(
            [CXX, "-shared", "-o", str(tmp_lib), *map(str, objects), f"-L{libdir}", *libs, f"-Wl,-rpath,{libdir}"],
            "linking " + LIBRARY_NAME,
        )
        os.replace(tmp_lib, out)
    finally:
        shutil.rmtree(objdir, ignore_errors=True)


def build(force: bool = False) -> Path:
    """Return the path of an up-to-date native library, compiling it if needed."""
    target_dir = cache_root() / "native" / build_key()
    target_dir.mkdir(parents=True, exist_ok=True)
    library = target_dir / LIBRARY_NAME
    with open(target_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or not library.exists():
            print(f"building native ns-3 models ({len(sources())} sources) into {target_dir} ...", file=sys.stderr)
            _compile_and_link(library)
    return library


_loaded_library: Path | None = None


def load_native(modules: tuple[str, ...] = DEFAULT_MODULES):
    """Load ns-3 plus our native models into this process; return the ``ns3`` namespace."""
    global _loaded_library
    import cppyy

    ns = load_ns3(modules)
    if _loaded_library is None:
        library = build()
        cppyy.add_include_path(str(SOURCE_DIR))
        cppyy.load_library(str(library))
        for header in headers():
            cppyy.include(header.name)
        _loaded_library = library
    return ns


def main() -> None:
    """``python -m emulation.native.build``: build (or rebuild with --force) and print the path."""
    force = "--force" in sys.argv[1:]
    try:
        print(build(force=force))
    except NativeBuildError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
