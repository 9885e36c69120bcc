"""Drawing helpers shared by the scenes: canvas, fonts, colours."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fleetvl_tools.fleetdata.difficulty import Difficulty, draw_distractors

# Named colours the retail questions ask about; values are what the camera sees at level 0.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 210),
    "yellow": (235, 205, 40),
}


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=max(6, size))
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def canvas(
    size: int, d: Difficulty, rng: np.random.Generator, base: tuple[int, int, int]
) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A background of ``base`` (jittered) with the difficulty's clutter already drawn."""
    tint = np.clip(np.asarray(base) + rng.integers(-15, 16, 3), 0, 255)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in tint))
    draw = ImageDraw.Draw(img)
    draw_distractors(draw, size, d.distractors, rng)
    return img, draw


def jitter(colour: tuple[int, int, int], amount: float, rng: np.random.Generator) -> tuple:
    c = np.asarray(colour, dtype=np.float64) + rng.normal(0.0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def text_centered(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, fill: tuple
) -> None:
    draw.text(xy, text, fill=fill, font=font(size), anchor="mm")
