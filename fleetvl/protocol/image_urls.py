"""Image checks at an OpenAI-compatible ingress (the router, a site agent): data URLs, size
and pixel budgets, digests."""

from __future__ import annotations

import base64
import binascii
import hashlib

from PIL import Image

from fleetvl.errors import InputError
from fleetvl.vlm.image import decode_image, smart_resize

__all__ = ["PayloadTooLarge", "inspect_image", "parse_data_url"]

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
            "data:image/...;base64,... URL (remote fetches are disabled here)"
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


def inspect_image(data: bytes, max_bytes: int, max_pixels: int) -> tuple[Image.Image, str, int]:
    """Validate untrusted image bytes: the decoded image (kept by a tier that runs the model
    itself, so the bytes are decoded once), their digest and estimated prompt tokens."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image of {len(data)} bytes is over the {max_bytes}-byte limit")
    img = decode_image(data, max_pixels)
    h, w = smart_resize(img.height, img.width)
    tokens = (h // _PATCH) * (w // _PATCH) // (_MERGE * _MERGE)
    return img, hashlib.sha256(data).hexdigest(), tokens
