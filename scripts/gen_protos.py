"""Regenerate the Python stubs in ecology/v1/ from protos/ (the only source of truth).

Run: python scripts/gen_protos.py [OUT_DIR]   (default: the repository root)
tests/test_protos_generated.py regenerates into a temp dir and compares byte for byte.
"""

from __future__ import annotations

import pathlib
import sys

import google.rpc
import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def include_paths() -> list[str]:
    """protoc -I flags: our protos, the well-known types (grpcio-tools) and google/rpc
    (googleapis-common-protos ships status.proto and error_details.proto; errors.proto
    imports them)."""
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    googleapis = pathlib.Path(next(iter(google.rpc.__path__))).parent.parent
    return [f"-I{PROTOS}", f"-I{well_known}", f"-I{googleapis}"]


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        *include_paths(),
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for pkg in ("ecology", "ecology/v1"):
        init = out_dir / pkg / "__init__.py"
        init.write_text('"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n')
    return sorted((out_dir / "ecology").rglob("*.py*"))


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path)
