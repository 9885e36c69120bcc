"""The agent's bundle fetch refuses what it cannot verify (a local file:// URL, no server)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from edge_agent.control import BundleRefused, fetch_bundle


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _serve(tmp: Path, data: bytes) -> tuple[str, str]:
    f = tmp / "bundle.tar"
    f.write_bytes(data)
    return f.as_uri(), "sha256:" + hashlib.sha256(data).hexdigest()


def test_verified_bundle_is_unpacked_with_progress(tmp_path: Path) -> None:
    url, digest = _serve(tmp_path, _tar({"manifest.json": b"{}", "model.onnx": b"x" * 5000}))
    seen: list[tuple[int, int]] = []
    out = fetch_bundle(url, digest, tmp_path / "b", progress=lambda d, t: seen.append((d, t)))
    assert (out / "model.onnx").read_bytes() == b"x" * 5000
    assert out.name == digest.removeprefix("sha256:")
    assert seen
    assert seen[-1][0] == len(Path(url.removeprefix("file://")).read_bytes())


def test_digest_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    url, _ = _serve(tmp_path, _tar({"manifest.json": b"{}"}))
    wrong = "sha256:" + "ab" * 32
    with pytest.raises(BundleRefused, match="digest mismatch: expected sha256:abab"):
        fetch_bundle(url, wrong, tmp_path / "b")
    assert list((tmp_path / "b").iterdir()) == []


def test_archive_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    url, digest = _serve(tmp_path, _tar({"../../evil.sh": b"rm -rf /"}))
    with pytest.raises(BundleRefused, match="unusable"):
        fetch_bundle(url, digest, tmp_path / "b")
    assert not (tmp_path / "evil.sh").exists()


def test_unreachable_url_and_bad_digest_format(tmp_path: Path) -> None:
    with pytest.raises(BundleRefused, match="download of .* failed"):
        fetch_bundle((tmp_path / "missing.tar").as_uri(), "sha256:" + "0" * 64, tmp_path / "b")
    with pytest.raises(BundleRefused, match="unsupported digest"):
        fetch_bundle("http://x", "md5:1", tmp_path / "b")
