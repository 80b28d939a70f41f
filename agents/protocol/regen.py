"""Regenerate ``opengym_pb2.py`` from ``opengym.proto`` (or check it is current).

The generated module is committed so that installing the testbed needs no
protoc (ns3-gym's missing ``messages_pb2`` is its most common install failure).
protoc runs from the repository root on ``agents/protocol/opengym.proto``, so the
generated code registers under the package path and any future cross-proto
import would read ``from agents.protocol import ..._pb2``, with no sys.path hack.

Usage: ``python -m agents.protocol.regen [--check]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTOCOL_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOCOL_DIR.parent.parent
PROTO_RELPATH = Path("agents/protocol/opengym.proto")
GENERATED = PROTOCOL_DIR / "opengym_pb2.py"


def generate() -> str:
    """Run the bundled protoc (grpcio-tools) and return the generated module's text."""
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as out_dir:
        args = [
            "protoc",
            f"-I{REPO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            str(REPO_ROOT / PROTO_RELPATH),
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc} on {PROTO_RELPATH}")
        text = (Path(out_dir) / PROTO_RELPATH.with_name("opengym_pb2.py")).read_text()
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.protocol.regen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed module differs from protoc's output")
    args = parser.parse_args(argv)
    fresh = generate()
    if args.check:
        current = GENERATED.read_text() if GENERATED.exists() else ""
        if current != fresh:
            print(f"{GENERATED} is stale: run `python -m agents.protocol.regen`", file=sys.stderr)
            return 1
        print(f"{GENERATED.name} is up to date", file=sys.stderr)
        return 0
    GENERATED.write_text(fresh)
    print(f"wrote {GENERATED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
