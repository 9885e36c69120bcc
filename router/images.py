"""The router's image store (a :class:`fleetvl.protocol.stored_images.ImageStore`) when no
shared cache is configured (data URLs and image checks at the ingress are
:mod:`fleetvl.protocol.image_urls`, shared with the site agent)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

__all__ = ["MemoryBlobStore"]


class MemoryBlobStore:
    """Image bytes by SHA-256 when no shared cache is configured (bounded, LRU)."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self._max = max_bytes
        self._size = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest not in self._blobs:
                self._blobs[digest] = data
                self._size += len(data)
                while self._size > self._max and len(self._blobs) > 1:
                    _, old = self._blobs.popitem(last=False)
                    self._size -= len(old)
            self._blobs.move_to_end(digest)
        return digest

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._blobs.get(digest)
            if data is not None:
                self._blobs.move_to_end(digest)
            return data
