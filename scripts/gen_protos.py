"""Generate Python gRPC stubs from protos/ into the repo root (package ``grove``; git-ignored).

    protos/grove/v1/api.proto  ->  grove/v1/api_pb2.py, grove/v1/api_pb2_grpc.py
"""
from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    proto_root = ROOT / "protos"
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    if not files:
        return 0
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={ROOT}",
         f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", *files]
    )
    if rc != 0:
        return rc
    # make every generated directory a regular package
    for d in {(ROOT / f).parent for f in files}:
        while d != ROOT:
            (d / "__init__.py").touch()
            d = d.parent
    return 0


if __name__ == "__main__":
    sys.exit(main())
