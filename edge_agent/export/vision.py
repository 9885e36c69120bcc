"""Export the Qwen-VL vision tower to one grid-agnostic ONNX graph.

The graph takes ``pixel_values`` plus the host-computed plan of
:mod:`fleetvl.vlm.vision_plan` and reuses the checkpoint's own modules (patch embedding,
rotary table, blocks' norms/linears/MLPs, merger), so weights and numerics are transformers'.
Only the attention is rewritten: per-segment attention becomes one masked attention whose
block-diagonal mask the graph builds from segment ids. Works for Qwen2.5-VL (windowed) and
Qwen2-VL (plain ViT) alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fleetvl.vlm.vision_plan import plan_vision

__all__ = ["VISION_INPUTS", "export_vision"]

log = logging.getLogger(__name__)

VISION_INPUTS = ("pixel_values", "rot_pos_ids", "window_index", "reverse_index", "window_seg", "full_seg")


def _wrapper(visual: Any, windowed: bool):
    import torch
    from torch import nn

    class VisionForExport(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual
            first = visual.blocks[0].attn
            self.num_heads = first.num_heads
            self.unit = visual.spatial_merge_size**2
            self.full_blocks = set(getattr(visual, "fullatt_block_indexes", []) or [])
            self.windowed = windowed

        @staticmethod
        def _rotate_half(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat((-x2, x1), dim=-1)

        def forward(self, pixel_values, rot_pos_ids, window_index, reverse_index, window_seg, full_seg):
            v = self.visual
            x = v.patch_embed(pixel_values)
            n, dim = x.shape
            if self.windowed:
                x = x.reshape(-1, self.unit, dim)[window_index].reshape(-1, dim)
            cos, sin = v.rotary_pos_emb(x, rot_pos_ids)
            cos = cos.float().unsqueeze(1)
            sin = sin.float().unsqueeze(1)
            neg = torch.tensor(float("-inf"), dtype=x.dtype)
            zero = torch.tensor(0.0, dtype=x.dtype)
            full_mask = torch.where(full_seg[:, None] == full_seg[None, :], zero, neg)
            win_mask = torch.where(window_seg[:, None] == window_seg[None, :], zero, neg)
            heads = self.num_heads
            hd = dim // heads
            scale = hd**-0.5
            for i, blk in enumerate(v.blocks):
                mask = full_mask if (not self.windowed or i in self.full_blocks) else win_mask
                h = blk.norm1(x)
                qkv = blk.attn.qkv(h).reshape(-1, 3, heads, hd).permute(1, 0, 2, 3)
                q, k, val = qkv[0], qkv[1], qkv[2]
                q = q * cos + self._rotate_half(q) * sin
                k = k * cos + self._rotate_half(k) * sin
                q, k, val = (t.transpose(0, 1) for t in (q, k, val))  # [H, N, hd]
                scores = torch.matmul(q, k.transpose(1, 2)) * scale + mask
                attn = torch.matmul(torch.softmax(scores, dim=-1), val)
                attn = attn.transpose(0, 1).reshape(-1, dim)
                x = x + blk.attn.proj(attn)
                x = x + blk.mlp(blk.norm2(x))
            merged = v.merger(x)
            if self.windowed:
                merged = merged[reverse_index]
            return merged

    return VisionForExport()


def export_vision(model: Any, out_path: str | Path, *, opset: int = 17) -> Path:
    """Export ``model.model.visual`` of a loaded Qwen-VL transformers model to ``out_path``.

    The example input is a real 2-image plan, with every axis that depends on the grid marked
    dynamic, so the traced graph holds no grid.
    """
    import torch

    visual = model.model.visual
    vcfg = visual.config
    windowed = hasattr(vcfg, "window_size") and bool(getattr(vcfg, "fullatt_block_indexes", None))
    wrapper = _wrapper(visual, windowed).eval()
    grids = [(1, 8, 12), (1, 6, 4)]
    plan = plan_vision(
        grids,
        spatial_merge_size=vcfg.spatial_merge_size,
        window_size=vcfg.window_size if windowed else None,
        patch_size=vcfg.patch_size,
    )
    n = sum(t * h * w for t, h, w in grids)
    patch_dim = 3 * vcfg.temporal_patch_size * vcfg.patch_size**2
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.standard_normal((n, patch_dim), dtype=np.float32))
    feeds = plan.as_feeds()
    args = (pixels, *(torch.from_numpy(feeds[k]) for k in VISION_INPUTS[1:]))
    dynamic = {
        "pixel_values": {0: "patches"},
        "rot_pos_ids": {0: "patches"},
        "window_index": {0: "merged"},
        "reverse_index": {0: "merged"},
        "window_seg": {0: "patches"},
        "full_seg": {0: "patches"},
        "image_features": {0: "merged"},
    }
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
