"""A bundle directory as one deterministic tar archive, and that archive's address.

The controller stores and serves bundles as archives named ``sha256:<hex>`` of their bytes;
an agent that starts from a bundle directory computes the same address for it, so the control
plane knows which bundle the agent already runs without sending it again.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import IO

__all__ = ["archive_digest", "pack_bundle", "write_archive"]


def write_archive(directory: str | Path, out: IO[bytes]) -> None:
    """Write the tar of ``directory`` to ``out``: sorted names, zeroed times and owners, so the
    same files always give the same bytes."""
    root = Path(directory)
    with tarfile.open(fileobj=out, mode="w|") as tar:  # a stream: hashed as it is written
        for p in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(p), arcname=str(p.relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_file():
                with p.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def pack_bundle(directory: str | Path) -> bytes:
    """The archive of ``directory`` in memory."""
    buf = io.BytesIO()
    write_archive(directory, buf)
    return buf.getvalue()


class _HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.h.update(b)
        return len(b)


def archive_digest(directory: str | Path) -> str:
    """``sha256:<hex>`` of the archive of ``directory``, streamed (bundles are hundreds of MB)."""
    sink = _HashSink()
    write_archive(directory, sink)  # type: ignore[arg-type]
    return "sha256:" + sink.h.hexdigest()
