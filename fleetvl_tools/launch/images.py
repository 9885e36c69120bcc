"""Deterministic demo pictures: substation gauges and retail shelves, drawn with PIL."""

from __future__ import annotations

import io
import math
import random

from PIL import Image, ImageDraw

__all__ = ["gauge_png", "png_bytes", "shelf_png"]


def png_bytes(img: Image.Image) -> bytes:
    """The picture as PNG file bytes (what a camera app would upload)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def gauge_png(reading: float, seed: int = 0, size: int = 160) -> bytes:
    """A dial gauge 0-100 with its needle at ``reading``."""
    rng = random.Random(seed)
    bg = (200 + rng.randint(0, 40), 200 + rng.randint(0, 40), 190 + rng.randint(0, 40))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    c, r = size / 2, size * 0.42
    d.ellipse([c - r, c - r, c + r, c + r], fill=(245, 245, 240), outline=(30, 30, 30), width=3)
    for tick in range(0, 101, 10):
        a = math.radians(225 - 270 * tick / 100)
        x0, y0 = c + 0.8 * r * math.cos(a), c - 0.8 * r * math.sin(a)
        x1, y1 = c + 0.95 * r * math.cos(a), c - 0.95 * r * math.sin(a)
        d.line([x0, y0, x1, y1], fill=(20, 20, 20), width=2)
    a = math.radians(225 - 270 * max(0.0, min(reading, 100.0)) / 100)
    d.line([c, c, c + 0.75 * r * math.cos(a), c - 0.75 * r * math.sin(a)], fill=(200, 20, 20),
           width=4)  # fmt: skip
    d.text((c - 14, c + r * 0.45), f"{seed:03d}", fill=(60, 60, 60))
    return png_bytes(img)


def shelf_png(empty_slots: set[int], seed: int = 0, width: int = 192, rows: int = 3) -> bytes:
    """A shelf of ``rows`` x 6 products; slot numbers in ``empty_slots`` are gaps."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, 40 * rows + 8), (235, 232, 225))
    d = ImageDraw.Draw(img)
    for row in range(rows):
        y = 4 + 40 * row
        d.rectangle([0, y + 34, width, y + 38], fill=(120, 90, 60))
        for col in range(6):
            if row * 6 + col in empty_slots:
                continue
            x = 4 + col * (width - 8) / 6
            color = (rng.randint(30, 230), rng.randint(30, 230), rng.randint(30, 230))
            d.rectangle([x + 2, y + 4, x + (width - 8) / 6 - 3, y + 33], fill=color)
    return png_bytes(img)
