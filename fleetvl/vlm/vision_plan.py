"""Host-side index arithmetic for the Qwen-VL vision towers.

Qwen2.5-VL's encoder reorders patches into 112-pixel windows, attends inside windows in most
blocks and across the whole image in a few, then restores the order after the 2x2 merger.
That arithmetic depends on the image grid, which is why exporting the tower as-is either
fails (dynamo: data-dependent shapes) or bakes one grid into the graph (legacy tracer).

We compute it here, per request, in NumPy (microseconds), and feed it to a grid-agnostic
graph as plain tensors: rotary position ids, the window permutation and its inverse, and one
segment id per patch for windowed and for full attention (the graph builds block-diagonal
masks from them). One ONNX file then serves every resolution. Qwen2-VL has no windows: its
plan is the identity permutation with per-image segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["VisionPlan", "plan_vision"]


@dataclass
class VisionPlan:
    """Every grid-dependent input of the exported vision graph."""

    rot_pos_ids: np.ndarray  # int64 [N, 2]: (row, col) of each patch, in window order
    window_index: np.ndarray  # int64 [N/m^2]: merged-patch order used inside the tower
    reverse_index: np.ndarray  # int64 [N/m^2]: argsort(window_index), restores image order
    window_seg: np.ndarray  # int64 [N]: attention segment of each patch in windowed blocks
    full_seg: np.ndarray  # int64 [N]: attention segment (one per frame) in full-attention blocks

    def as_feeds(self) -> dict[str, np.ndarray]:
        return {
            "rot_pos_ids": self.rot_pos_ids,
            "window_index": self.window_index,
            "reverse_index": self.reverse_index,
            "window_seg": self.window_seg,
            "full_seg": self.full_seg,
        }


def _rot_pos_ids(t: int, h: int, w: int, m: int) -> np.ndarray:
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // m, m, w // m, m)
    hpos = hpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    wpos = wpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([hpos, wpos], axis=-1), (t, 1))


def _windows(t: int, h: int, w: int, m: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Merged-patch order and window sizes for one image (transformers' algorithm)."""
    lh, lw = h // m, w // m
    index = np.arange(t * lh * lw).reshape(t, lh, lw)
    pad_h = window - lh % window
    pad_w = window - lw % window
    nh, nw = (lh + pad_h) // window, (lw + pad_w) // window
    padded = np.full((t, lh + pad_h, lw + pad_w), -100, dtype=np.int64)
    padded[:, :lh, :lw] = index
    padded = padded.reshape(t, nh, window, nw, window).transpose(0, 1, 3, 2, 4)
    padded = padded.reshape(t, nh * nw, window * window)
    sizes = (padded != -100).sum(-1).reshape(-1)
    flat = padded.reshape(-1)
    return flat[flat != -100], sizes[sizes > 0]


def plan_vision(
    grids: Sequence[tuple[int, int, int]],
    spatial_merge_size: int = 2,
    window_size: int | None = 112,
    patch_size: int = 14,
) -> VisionPlan:
    """Build the plan for a batch of images, in prompt order.

    Args:
        grids: ``(t, h, w)`` patch grid per image.
        window_size: Qwen2.5-VL's window in pixels; ``None`` for Qwen2-VL (no windows).
    """
    m = spatial_merge_size
    unit = m * m
    pos, widx, wseg, fseg = [], [], [], []
    base = 0
    seg = 0
    frame = 0
    for t, h, w in grids:
        n_merged = t * (h // m) * (w // m)
        p = _rot_pos_ids(t, h, w, m)
        if window_size:
            order, sizes = _windows(t, h, w, m, window_size // m // patch_size)
        else:
            # One segment per frame, like transformers' cu_seqlens.
            order, sizes = np.arange(n_merged), np.full(t, n_merged // t)
        widx.append(order + base)
        # Position ids follow the patches through the same permutation.
        pos.append(p.reshape(n_merged, unit, 2)[order].reshape(-1, 2))
        wseg.append(np.repeat(np.arange(seg, seg + len(sizes)), sizes * unit))
        seg += len(sizes)
        fseg.append(np.repeat(np.arange(frame, frame + t), h * w))
        frame += t
        base += n_merged
    window_index = np.concatenate(widx).astype(np.int64)
    return VisionPlan(
        rot_pos_ids=np.concatenate(pos).astype(np.int64),
        window_index=window_index,
        reverse_index=np.argsort(window_index, kind="stable").astype(np.int64),
        window_seg=np.concatenate(wseg).astype(np.int64),
        full_seg=np.concatenate(fseg).astype(np.int64),
    )
