"""Fetch a bundle archive, verify its digest, unpack it: nothing unverified reaches the engine."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = ["BundleRefused", "fetch_bundle"]

CHUNK = 1 << 20


class BundleRefused(Exception):
    """A bundle the agent will not install (digest mismatch, bad archive, download failed)."""


def fetch_bundle(
    url: str,
    digest: str,
    bundle_dir: Path,
    token: str | None = None,
    timeout_s: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download ``url`` to ``bundle_dir/<hex>``; returns that directory.

    Already unpacked bundles are reused. The archive is hashed while it streams to a temp file
    and unpacked only if the hash equals ``digest``. ``progress(bytes_done, bytes_total)`` is
    called as the download advances (total 0 when the server sends no length).

    Raises:
        BundleRefused: with the reason (expected vs actual digest, HTTP error, bad archive).
    """
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise BundleRefused(f"unsupported digest {digest!r} (expected 'sha256:<64 hex>')")
    dest = bundle_dir / digest.removeprefix("sha256:")
    if (dest / ".verified").exists():
        return dest
    bundle_dir.mkdir(parents=True, exist_ok=True)
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            total, done = int(resp.headers.get("Content-Length") or 0), 0
            while chunk := resp.read(CHUNK):
                h.update(chunk)
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            raise BundleRefused(f"digest mismatch: expected {digest}, downloaded {actual}")
        unpack = Path(tempfile.mkdtemp(dir=bundle_dir, suffix=".unpack"))
        try:
            with tarfile.open(tmp) as tar:
                tar.extractall(unpack, filter="data")  # refuses absolute paths and links out
            (unpack / ".verified").write_text(digest)
            if dest.exists():
                shutil.rmtree(dest)
            unpack.rename(dest)
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(unpack, ignore_errors=True)
            raise BundleRefused(f"bundle archive is unusable: {exc}") from None
        return dest
    except OSError as exc:  # urllib's URLError/HTTPError are OSErrors
        raise BundleRefused(f"download of {url} failed: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
