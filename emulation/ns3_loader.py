"""Load only the ns-3 modules a scenario needs from the `ns3` wheel.

``from ns import ns`` loads all ~45 modules (about 10 s and 600 MB); the
dumbbell and video scenarios need nine. This module repeats what the wheel's
own loader does (include the module headers, load the libraries in
dependency order, register ``Ptr`` as a smart pointer) for a chosen subset.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

#: Modules our scenarios use, in dependency order (core first).
DEFAULT_MODULES: tuple[str, ...] = (
    "core",
    "network",
    "bridge",
    "traffic-control",
    "internet",
    "point-to-point",
    "stats",
    "applications",
)

NS3_VERSION = "3.44"


@functools.cache
def ns3_prefix() -> Path:
    """The wheel's install prefix (holds ``include/`` and ``lib64/``)."""
    spec = importlib.util.find_spec("ns3")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ns3 wheel is not installed: pip install 'ns3==3.44.*'")
    prefix = Path(next(iter(spec.submodule_search_locations)))
    if not (prefix / "include" / "ns3" / "core-module.h").exists():
        raise RuntimeError(f"ns-3 headers not found under {prefix}/include")
    return prefix


def library_path(module: str) -> Path:
    path = ns3_prefix() / "lib64" / f"libns{NS3_VERSION}-{module}.so"
    if not path.exists():
        raise RuntimeError(f"ns-3 module library missing: {path}")
    return path


_loaded: set[str] = set()


def load_ns3(modules: tuple[str, ...] = DEFAULT_MODULES):
    """Load ``modules`` (idempotent) and return the ``ns3`` C++ namespace."""
    import cppyy

    prefix = ns3_prefix()
    if not _loaded:
        import libcppyy

        libcppyy.AddSmartPtrType("Ptr")
        cppyy.add_library_path(str(prefix / "lib64"))
        cppyy.add_include_path(str(prefix / "include"))
    todo = [m for m in modules if m not in _loaded]
    # Libraries first: the headers' static initialisers need their symbols.
    for module in todo:
        cppyy.load_library(str(library_path(module)))
    for module in todo:
        cppyy.include(f"ns3/{module}-module.h")
        _loaded.add(module)
    ns = cppyy.gbl.ns3
    if not getattr(ns, "_testbed_ready", False):
        # Nodes are owned by ns-3's NodeList; Python must not delete them.
        pending: list = []
        ns.Node.__del__ = lambda self: pending.append(self)
        ns._testbed_ready = True
    return ns
