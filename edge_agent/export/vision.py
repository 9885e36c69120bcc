"""Export the Qwen-VL vision tower to one grid-agnostic ONNX graph.

Input contract is onnxruntime-genai's: ``pixel_values [patches, 1176]`` and
``image_grid_thw [1, 3]`` (one image per run), output ``image_features`` in merged-token
order. The grid-dependent arithmetic that defeats exporters (Qwen2.5-VL's window permutation,
per-window and per-image attention segments, 2-D rotary ids) is rewritten with tensor ops
only — arange, div/mod, argsort — so the tracer records it as a dynamic subgraph instead of
baking one grid into constants. Attention segments become a block-diagonal mask built from
segment ids. The checkpoint's own modules (patch embedding, rotary table, norms, linears,
MLPs, merger) are reused, so weights and numerics are transformers'. Qwen2-VL (plain ViT) is
the same graph without the window permutation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VISION_INPUTS", "export_vision"]

log = logging.getLogger(__name__)

VISION_INPUTS = ("pixel_values", "image_grid_thw")


def _wrapper(visual: Any, windowed: bool):
    import torch
    from torch import nn

    cfg = visual.config
    merge = visual.spatial_merge_size
    win = cfg.window_size // merge // cfg.patch_size if windowed else 0

    class VisionForExport(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual
            self.num_heads = visual.blocks[0].attn.num_heads
            self.unit = merge * merge
            self.full_blocks = set(getattr(visual, "fullatt_block_indexes", []) or [])
            di = torch.tensor([i for i in range(merge) for _ in range(merge)])
            dj = torch.tensor([j for _ in range(merge) for j in range(merge)])
            self.register_buffer("di", di, persistent=False)
            self.register_buffer("dj", dj, persistent=False)

        @staticmethod
        def _rotate_half(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat((-x2, x1), dim=-1)

        def _plan(self, grid: torch.Tensor):
            """Window order, its inverse, rotary ids and attention segments for one grid."""
            t, h, w = grid[0, 0], grid[0, 1], grid[0, 2]
            lh, lw = h // merge, w // merge
            k = torch.arange(t * lh * lw)
            frame = k // (lh * lw)
            r = (k // lw) % lh
            c = k % lw
            if windowed:
                nwr, nwc = lh // win + 1, lw // win + 1  # upper bounds of the window grid
                window = (frame * nwr + r // win) * nwc + c // win
                key = window * (win * win) + (r % win) * win + (c % win)
                order = torch.argsort(key)
            else:
                window = frame
                order = k
            reverse = torch.argsort(order)
            ro, co = r[order], c[order]
            hpos = (ro.unsqueeze(1) * merge + self.di).reshape(-1)
            wpos = (co.unsqueeze(1) * merge + self.dj).reshape(-1)
            rot_ids = torch.stack([hpos, wpos], dim=-1)
            per_patch = torch.ones(self.unit, dtype=torch.int64)
            win_seg = (window[order].unsqueeze(1) * per_patch).reshape(-1)
            full_seg = (frame[order].unsqueeze(1) * per_patch).reshape(-1)
            return order, reverse, rot_ids, win_seg, full_seg

        def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
            v = self.visual
            order, reverse, rot_ids, win_seg, full_seg = self._plan(image_grid_thw)
            x = v.patch_embed(pixel_values)
            dim = x.shape[-1]
            if windowed:
                x = x.reshape(-1, self.unit, dim)[order].reshape(-1, dim)
            cos, sin = v.rotary_pos_emb(x, rot_ids)
            cos = cos.float().unsqueeze(1)
            sin = sin.float().unsqueeze(1)
            neg = torch.full((), float("-inf"))
            zero = torch.zeros(())
            full_mask = torch.where(full_seg[:, None] == full_seg[None, :], zero, neg)
            win_mask = torch.where(win_seg[:, None] == win_seg[None, :], zero, neg)
            heads = self.num_heads
            hd = dim // heads
            scale = hd**-0.5
            for i, blk in enumerate(v.blocks):
                mask = full_mask if (not windowed or i in self.full_blocks) else win_mask
                h = blk.norm1(x)
                qkv = blk.attn.qkv(h).reshape(-1, 3, heads, hd).permute(1, 0, 2, 3)
                q, k, val = qkv[0], qkv[1], qkv[2]
                q = q * cos + self._rotate_half(q) * sin
                k = k * cos + self._rotate_half(k) * sin
                q, k, val = (z.transpose(0, 1) for z in (q, k, val))  # [H, N, hd]
                scores = torch.matmul(q, k.transpose(1, 2)) * scale + mask
                attn = torch.matmul(torch.softmax(scores, dim=-1), val)
                attn = attn.transpose(0, 1).reshape(-1, dim)
                x = x + blk.attn.proj(attn)
                x = x + blk.mlp(blk.norm2(x))
            merged = v.merger(x)
            if windowed:
                merged = merged[reverse]
            return merged

    return VisionForExport()


def export_vision(model: Any, out_path: str | Path, *, opset: int = 17) -> Path:
    """Export ``model.model.visual`` of a loaded Qwen-VL transformers model to ``out_path``.

    The tracer records the grid arithmetic as graph ops (tests run other grids through it).
    """
    import torch

    visual = model.model.visual
    vcfg = visual.config
    windowed = hasattr(vcfg, "window_size") and bool(getattr(vcfg, "fullatt_block_indexes", None))
    wrapper = _wrapper(visual, windowed).eval()
    # Trace on a grid whose sides are not multiples of the window, so padding paths are live.
    grid = (1, 10, 14)
    n = grid[0] * grid[1] * grid[2]
    patch_dim = 3 * vcfg.temporal_patch_size * vcfg.patch_size**2
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.standard_normal((n, patch_dim), dtype=np.float32))
    args = (pixels, torch.tensor([grid], dtype=torch.int64))
    dynamic = {"pixel_values": {0: "patches"}, "image_features": {0: "image_tokens"}}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            str(out),
            input_names=list(VISION_INPUTS),
            output_names=["image_features"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
            external_data=False,
        )
    return out
