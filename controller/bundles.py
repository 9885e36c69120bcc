"""Content-addressed bundle store: archives named by their SHA-256, served to agents.

A bundle is a tar archive of an edge bundle directory; its address is ``sha256:<hex>`` of the
archive bytes. The store checks the digest on the way in; agents check it again on the way
out (the store may sit behind any HTTP/S3-style URL, and disks rot).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

from controller.spec import DIGEST_RE
from fleetvl.vlm.bundle_archive import pack_bundle

__all__ = ["BundleStore", "pack_bundle"]


class BundleStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"not a bundle digest: {digest!r} (expected 'sha256:<64 hex>')")
        return self.root / digest.removeprefix("sha256:")

    def put(self, data: bytes, expect: str | None = None) -> str:
        """Store an archive held in memory; see :meth:`ingest` for streams."""
        w = self.ingest()
        w.write(data)
        return w.commit(expect)

    def ingest(self) -> BundleUpload:
        """An upload written to disk as it arrives (bundles are hundreds of MB)."""
        return BundleUpload(self)

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()


class BundleUpload:
    """Hashes while writing to a temp file; :meth:`commit` checks and files it by digest."""

    def __init__(self, store: BundleStore) -> None:
        self.store = store
        self.hash = hashlib.sha256()
        self.size = 0
        fd, self.tmp = tempfile.mkstemp(dir=store.root, suffix=".upload")
        self.file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.size += len(chunk)
        self.file.write(chunk)

    def abort(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)

    def commit(self, expect: str | None = None) -> str:
        """File the upload; returns its digest.

        Raises:
            ValueError: ``expect`` differs from the content's digest, or it is not a tar.
        """
        self.file.close()
        digest = "sha256:" + self.hash.hexdigest()
        try:
            if expect is not None and expect != digest:
                raise ValueError(f"upload digest mismatch: declared {expect}, content is {digest}")
            try:
                with tarfile.open(self.tmp) as tar:
                    tar.getmembers()
            except tarfile.TarError as exc:
                raise ValueError(f"a bundle must be a tar archive: {exc}") from None
            os.replace(self.tmp, self.store.path(digest))
        finally:
            Path(self.tmp).unlink(missing_ok=True)
        return digest
