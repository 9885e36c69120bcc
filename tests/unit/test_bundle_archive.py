"""A bundle directory's archive address is stable and names its content."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from fleetvl.vlm.bundle_archive import archive_digest, pack_bundle


def _bundle(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "manifest.json").write_text('{"files": {}}')
    (root / "model.onnx").write_bytes(os.urandom(300_000))
    (root / "sub" / "extra.txt").write_text("x")
    return root


def test_streamed_digest_is_the_digest_of_the_packed_archive(tmp_path: Path) -> None:
    d = _bundle(tmp_path / "b")
    packed = pack_bundle(d)
    assert archive_digest(d) == "sha256:" + hashlib.sha256(packed).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "model.onnx", "sub", "sub/extra.txt"]


def test_digest_ignores_times_and_follows_content(tmp_path: Path) -> None:
    d = _bundle(tmp_path / "b")
    first = archive_digest(d)
    os.utime(d / "model.onnx", (1, 1))
    assert archive_digest(d) == first  # same files, other mtimes: same address
    (d / "sub" / "extra.txt").write_text("y")
    assert archive_digest(d) != first
