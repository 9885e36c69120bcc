"""Test helpers: synthetic camera frames and encoded images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """A camera frame stand-in: smooth gradients plus noise, so resizing has work to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / max(w, 1)), (yy * 255 / max(h, 1)), ((xx + yy) % 256)], -1)
    noise = rng.normal(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
