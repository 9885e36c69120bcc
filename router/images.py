"""Images at the ingress: data URLs, size and pixel budgets, digests, a blob store."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict

from fleetvl.errors import InputError
from fleetvl.vlm.image import decode_image, smart_resize

__all__ = ["MemoryBlobStore", "PayloadTooLarge", "check_image", "parse_data_url"]

_MERGE = 2  # Qwen-VL merges 2x2 patches into one token
_PATCH = 14


class PayloadTooLarge(InputError):
    """A body or image over its byte limit (HTTP 413)."""


def parse_data_url(url: str, max_bytes: int) -> bytes:
    """Bytes of a ``data:image/...;base64,`` URL; anything else is refused with the reason."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "(none)"
        raise InputError(
            f"image_url scheme {scheme!r} is not accepted: send the image inline as a "
            "data:image/...;base64,... URL (remote fetches are disabled on this router)"
        )
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise InputError("image_url must be a data:image/<type>;base64,<data> URL")
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"image is over the {max_bytes}-byte limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"image_url data is not valid base64: {exc}") from None


def check_image(data: bytes, max_bytes: int, max_pixels: int) -> tuple[str, int]:
    """Validate untrusted image bytes; their digest and estimated prompt tokens."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image of {len(data)} bytes is over the {max_bytes}-byte limit")
    img = decode_image(data, max_pixels)
    h, w = smart_resize(img.height, img.width)
    tokens = (h // _PATCH) * (w // _PATCH) // (_MERGE * _MERGE)
    return hashlib.sha256(data).hexdigest(), tokens


class MemoryBlobStore:
    """Image bytes by SHA-256 when no shared cache is configured (bounded, LRU)."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self._max = max_bytes
        self._size = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, digests: list[str]) -> list[bool]:
        with self._lock:
            return [d in self._blobs for d in digests]

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
