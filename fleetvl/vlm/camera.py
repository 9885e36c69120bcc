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
_GLOBAL = 19  # global camera features before the layout
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
# Colourfulness: |R - G| and |(R + G) / 2 - B|.
_COLOUR = np.asarray([[1.0, 0.5], [-1.0, 0.5], [0.0, -1.0]], dtype=np.float32)


def _pool(n: int, groups: int, diffs: bool = False) -> np.ndarray:
    """``[groups, n]`` 0/1 rows that sum consecutive blocks of ``n`` values; ``diffs``: of the
    ``n - 1`` neighbour differences, only those inside a block."""
    c = n // groups
    m = np.zeros((groups, n - 1 if diffs else n), dtype=np.float32)
    for g in range(groups):
        m[g, g * c : (g + 1) * c - (1 if diffs else 0)] = 1
    return m


# Sums over blocks as products with these (a small matrix product costs a fraction of a
# NumPy reduction along an axis, and this runs on every request).
_ROWS = _pool(THUMB, _CELLS)
_DIFFS = _pool(THUMB, _CELLS, diffs=True)
_HALF = _pool(THUMB, THUMB // 2) * 0.5
_ONES = np.ones(THUMB * THUMB, dtype=np.float32)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """``[THUMB, THUMB, 3]`` uint8 box-downsampled copy of an ``HxWx3`` uint8 image."""
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    if h % THUMB == 0 and w % THUMB == 0:  # every preprocessed image: twice as fast
        return np.asarray(img.reduce((w // THUMB, h // THUMB)))
    return np.asarray(img.resize((THUMB, THUMB), Image.Resampling.BOX))


def _sharpness(dx: np.ndarray, dy: np.ndarray, sq: np.ndarray, var: float) -> tuple[float, float]:
    """The structure tensor's eigenvalues (the gradient energy in the weakest and in the
    strongest direction) over the image's luminance variance, as logs. Motion blur removes the
    edges along its direction and keeps those across it (a small minimum beside a normal
    maximum); defocus lowers both. Over the variance, so exposure and contrast cancel out
    (the percentiles measure those). Invariant under quarter turns, as a global feature must
    be: the horizontal, vertical and both diagonal differences are each taken over every
    pair, and a quarter turn swaps horizontal with vertical and one diagonal with the other.
    """
    e = [float(np.vdot(d, d)) / d.size for d in (dx, dy, sq[1:, 1:] - sq[:-1, :-1],
                                                   sq[1:, :-1] - sq[:-1, 1:])]  # fmt: skip
    mid, rad = (e[0] + e[1]) / 2, math.hypot((e[0] - e[1]) / 2, (e[2] - e[3]) / 4)
    return math.log((max(mid - rad, 0.0) + 1e-7) / var), math.log((mid + rad + 1e-7) / var)


def camera_vector(thumb: np.ndarray) -> np.ndarray:
    """Global features, then the layout ``[_CELLS, _CELLS, (lum, |dx|, |dy|)]`` flattened.

    Global: per-channel mean and std, luminance 1st/50th/99th percentiles, saturated and
    black fractions, log edge energy at the thumbnail's scale and at half of it, two
    colourfulness terms, and the sharpness in the weakest and the strongest direction at
    both scales.
    """
    n, k, c, h = THUMB, THUMB * THUMB, THUMB // _CELLS, THUMB // 2
    px = thumb.reshape(-1, 3).astype(np.float32) * (1 / 255)
    lum = px @ _LUMA
    sq = lum.reshape(n, n)
    dx, dy = sq[:, 1:] - sq[:, :-1], sq[1:] - sq[:-1]
    # Edges inside each cell only: a quarter turn then maps every cell's horizontal pairs onto
    # the turned cell's vertical ones exactly (the layout is turn-equivariant, no padding).
    layout = np.empty((_CELLS, _CELLS, 3), dtype=np.float32)
    layout[..., 0] = _ROWS @ sq @ _ROWS.T * (1 / (c * c))
    layout[..., 1] = _ROWS @ np.abs(dx) @ _DIFFS.T * (1 / (c * (c - 1)))
    layout[..., 2] = _DIFFS @ np.abs(dy) @ _ROWS.T * (1 / (c * (c - 1)))
    half = _HALF @ sq @ _HALF.T
    hx, hy = half[:, 1:] - half[:, :-1], half[1:] - half[:-1]
    ones = _ONES[: h * (h - 1)]
    g2 = float(ones @ np.abs(hx).reshape(-1) + ones @ np.abs(hy).reshape(-1)) / (h * (h - 1))
    g1 = float(layout[..., 1:].sum()) / (_CELLS * _CELLS)
    ranks = [k // 100, k // 2, k * 99 // 100]
    pct = np.partition(lum, ranks)[ranks]
    mean = _ONES @ px * (1 / k)
    std = np.sqrt(np.maximum(_ONES @ (px * px) * (1 / k) - mean * mean, 0.0))
    colour = _ONES @ np.abs(px @ _COLOUR) * (1 / k)
    lm = float(mean @ _LUMA)
    # Rounding can leave a flat frame's variance a hair below zero.
    var = max(float(np.vdot(lum, lum)) / k - lm * lm, 0.0) + 1e-7
    out = np.empty(_GLOBAL + layout.size)
    out[:_GLOBAL] = [
        *mean.tolist(), *std.tolist(), *pct.tolist(),
        np.count_nonzero(lum > 0.97) / k, np.count_nonzero(lum < 0.03) / k,
        math.log(g1 + 1e-4), math.log(g2 + 1e-4), *colour.tolist(),
        *_sharpness(dx, dy, sq, var), *_sharpness(hx, hy, half, var),
    ]  # fmt: skip
    out[_GLOBAL:] = layout.reshape(-1)
    return out


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
