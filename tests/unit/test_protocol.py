"""The committed gRPC stubs match the proto (regenerate: python -m fleetvl.protocol.generate)."""

from __future__ import annotations

from pathlib import Path

from fleetvl.protocol.generate import ROOT, generate


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc produced nothing"
    for f in fresh:
        committed = ROOT / "fleetvl" / "protocol" / f.name
        assert committed.exists(), f"{f.name} is not committed"
        assert committed.read_text() == f.read_text(), (
            f"{f.name} is stale: run `python -m fleetvl.protocol.generate`"
        )
