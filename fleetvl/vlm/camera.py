"""What a camera-health check looks at: a thumbnail and its feature vector.

The out-of-scope score's camera part (:mod:`fleetvl.vlm.scope`) measures a request's image by
these features against the in-scope images of its scene. Preprocessing computes them
(:func:`fleetvl.vlm.image.preprocess`) while the image is still in the CPU's caches.
NumPy and Pillow only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["THUMB", "TURNS", "camera_vector", "thumbnail"]

# Thumbnail side in pixels: 28 divides both sides of every preprocessed image (they are
# multiples of the 28-pixel merged patch), so the thumbnail is an exact box reduction.
THUMB = 28
_CELLS = 4  # layout grid side
_GLOBAL = 15  # global camera features before the layout
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
# Colourfulness: |R - G| and |(R + G) / 2 - B|.
_COLOUR = np.asarray([[1.0, 0.5], [-1.0, 0.5], [0.0, -1.0]], dtype=np.float32)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """``[THUMB, THUMB, 3]`` uint8 box-downsampled copy of an ``HxWx3`` uint8 image."""
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    if h % THUMB == 0 and w % THUMB == 0:  # every preprocessed image: twice as fast
        return np.asarray(img.reduce((w // THUMB, h // THUMB)))
    return np.asarray(img.resize((THUMB, THUMB), Image.Resampling.BOX))


def camera_vector(thumb: np.ndarray) -> np.ndarray:
    """Global features, then the layout ``[_CELLS, _CELLS, (lum, |dx|, |dy|)]`` flattened.

    Global: per-channel mean and std, luminance 1st/50th/99th percentiles, saturated and
    black fractions, log edge energy at the thumbnail's scale and at half of it, and two
    colourfulness terms. Few NumPy calls (this runs on every request): sums instead of
    repeated means, one partition for the percentiles.
    """
    n = THUMB
    px = thumb.reshape(-1, 3).astype(np.float32) * (1 / 255)
    lum = px @ _LUMA
    c = n // _CELLS
    cells = lum.reshape(_CELLS, c, _CELLS, c)
    # Edges inside each cell only: a quarter turn then maps every cell's horizontal pairs onto
    # the turned cell's vertical ones exactly (the layout is turn-equivariant, no padding).
    layout = np.stack([
        cells.mean(axis=(1, 3)),
        np.abs(np.diff(cells, axis=3)).mean(axis=(1, 3)),
        np.abs(np.diff(cells, axis=1)).mean(axis=(1, 3)),
    ], axis=-1)  # fmt: skip
    sq = lum.reshape(n, n)
    half = sq.reshape(n // 2, 2, n // 2, 2).mean(axis=(1, 3))
    g2 = (np.abs(half[:, 1:] - half[:, :-1]).sum() + np.abs(half[1:] - half[:-1]).sum()) / (
        (n // 2) * (n // 2 - 1)
    )
    g1 = layout[..., 1:].sum() / (_CELLS * _CELLS)
    k = lum.size
    ranks = [k // 100, k // 2, k * 99 // 100]
    pct = np.partition(lum, ranks)[ranks]
    mean = px.sum(0) / k
    std = np.sqrt(np.maximum(np.einsum("ij,ij->j", px, px) / k - mean * mean, 0.0))
    colour = np.abs(px @ _COLOUR).sum(0) / k
    glob = [
        *mean, *std, *pct,
        np.count_nonzero(lum > 0.97) / k, np.count_nonzero(lum < 0.03) / k,
        math.log(g1 + 1e-4), math.log(g2 + 1e-4), *colour,
    ]  # fmt: skip
    return np.concatenate([np.asarray(glob, dtype=np.float64), layout.reshape(-1)])


def _turn_index() -> np.ndarray:
    """``[4, F]`` indices that give the camera vector of the image turned k quarter turns (a
    quarter turn rotates the layout grid and swaps horizontal and vertical edges)."""
    cells = np.arange(_CELLS * _CELLS * 3).reshape(_CELLS, _CELLS, 3)
    out = []
    for k in range(4):
        t = np.rot90(cells, k, axes=(0, 1))
        if k % 2:
            t = t[..., [0, 2, 1]]
        out.append(np.concatenate([np.arange(_GLOBAL), _GLOBAL + t.reshape(-1)]))
    return np.stack(out)


TURNS = _turn_index()
