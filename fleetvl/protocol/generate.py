"""Regenerate the protobuf/gRPC stubs: ``python -m fleetvl.protocol.generate [OUT_ROOT]``.

The stubs are committed (a site box needs no protoc); ``tests/unit/test_protocol.py`` fails
when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "fleetvl/protocol/fleetvl.proto"
# The control plane (agents <-> controller) has its own package, fleetvl.control.v1.
PROTOS = (PROTO, "fleetvl/protocol/control.proto")


def generate(out_root: Path = ROOT) -> list[Path]:
    from grpc_tools import protoc

    out_root.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *(str(ROOT / p) for p in PROTOS),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    base = out_root / "fleetvl" / "protocol"
    return sorted([*base.glob("fleetvl_pb2*"), *base.glob("control_pb2*")])


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(p)  # noqa: T201
