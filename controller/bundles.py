"""Content-addressed bundle store: archives named by their SHA-256, served to agents.

A bundle is a tar archive of an edge bundle directory; its address is ``sha256:<hex>`` of the
archive bytes. The store checks the digest on the way in; agents check it again on the way
out (the store may sit behind any HTTP/S3-style URL, and disks rot).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

from controller.spec import DIGEST_RE

__all__ = ["BundleStore", "pack_bundle"]


def pack_bundle(directory: str | Path) -> bytes:
    """A deterministic tar of ``directory`` (sorted names, zeroed times and owners)."""
    root = Path(directory)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(p), arcname=str(p.relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_file():
                with p.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


class BundleStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"not a bundle digest: {digest!r} (expected 'sha256:<64 hex>')")
        return self.root / digest.removeprefix("sha256:")

    def put(self, data: bytes, expect: str | None = None) -> str:
        """Store an archive; returns its digest.

        Raises:
            ValueError: ``expect`` is given and differs from the content's digest, or the
                bytes are not a tar archive.
        """
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expect is not None and expect != digest:
            raise ValueError(f"upload digest mismatch: declared {expect}, content is {digest}")
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.getmembers()
        except tarfile.TarError as exc:
            raise ValueError(f"a bundle must be a tar archive: {exc}") from None
        dest = self.path(digest)
        if not dest.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        return digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()
