"""Difficulty knobs and the image degradations they drive.

A sample's ``level`` in [0, 1] sets every knob at once (noise, blur, contrast, occlusion,
scale, distractors); scenes also read it for their intrinsic hardness (closer temperatures,
an oil level nearer a mark). Level 0 is a clean, large, unambiguous render.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["Difficulty", "degrade"]


@dataclass(frozen=True)
class Difficulty:
    """How hard one rendered image is. Knobs are absolute, so a test can set one alone."""

    level: float = 0.0
    noise: float = 0.0  # std of additive Gaussian pixel noise (0-255 scale)
    blur: float = 0.0  # Gaussian blur radius in pixels
    contrast: float = 1.0  # 1 = unchanged; lower pulls every pixel towards mid-grey
    occlusion: float = 0.0  # fraction of the image covered by semi-transparent smudges
    scale: float = 1.0  # object size relative to the clean render
    distractors: int = 0  # clutter shapes drawn behind the objects

    @classmethod
    def at(cls, level: float, rng: np.random.Generator) -> Difficulty:
        """Knobs for ``level``, jittered per sample so two images of a level differ."""
        lv = float(np.clip(level, 0.0, 1.0))

        def jit(x: float) -> float:
            return float(x * rng.uniform(0.6, 1.0))

        return cls(
            level=lv,
            noise=jit(28.0 * lv),
            blur=jit(1.5 * lv),
            contrast=1.0 - jit(0.6 * lv),
            occlusion=jit(0.2 * lv),
            scale=1.0 - jit(0.4 * lv),
            distractors=int(round(jit(6.0 * lv))),
        )

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def draw_distractors(
    draw: ImageDraw.ImageDraw, size: int, count: int, rng: np.random.Generator
) -> None:
    """Background clutter: cables, boxes and blobs in muted colours."""
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(60, 200, 3))
        kind = int(rng.integers(0, 3))
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = (int(v) for v in rng.integers(0, size, 2))
        if kind == 0:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.rectangle(
                [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                outline=colour,
                width=int(rng.integers(1, 3)),
            )
        else:
            r = int(rng.integers(3, max(4, size // 10)))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)


def degrade(image: Image.Image, d: Difficulty, rng: np.random.Generator) -> Image.Image:
    """Apply occlusion, contrast, blur and noise (in that order, as a camera would)."""
    size = image.size[0]
    img = image
    if d.occlusion > 0:
        # Smudges and glare are translucent: they hide detail without erasing the answer.
        overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
        od = ImageDraw.Draw(overlay)
        covered = 0.0
        while covered < d.occlusion:
            w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
            x, y = (int(v) for v in rng.integers(0, size - min(w, h), 2))
            shade = int(rng.choice([30, 220]))
            od.ellipse([x, y, x + w, y + h], fill=(shade, shade, shade, int(rng.integers(60, 130))))
            covered += (w * h * 0.785) / (size * size)
        img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    arr = np.asarray(img).astype(np.float32)
    if d.contrast < 1.0:
        arr = 128.0 + (arr - 128.0) * d.contrast
    if d.blur > 0.05:
        blurred = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(d.blur)
        )
        arr = np.asarray(blurred).astype(np.float32)
    if d.noise > 0:
        arr = arr + rng.normal(0.0, d.noise, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
