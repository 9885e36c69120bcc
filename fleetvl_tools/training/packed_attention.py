"""Batched vision attention for training on same-size images.

transformers' Qwen2.5-VL vision attention (outside flash-attention) loops in Python over the
packed chunks (one per window per image), so a batch of 64 images costs hundreds of small
kernel launches per layer and a training step is launch-bound. Every fleet image has the
same size and is one window, so the chunks are equal and the loop is one batched SDPA call.

The registered name contains "flash" because that is what routes transformers to pass the
whole packed sequence with ``cu_seqlens``; the computation is plain SDPA, identical to the
per-chunk loop (tested). Training switches it on for the vision tower only and restores
the default before saving, so checkpoints never name it.

The vision tower also rebuilds its rotary positions and window order from ``grid_thw`` on
every forward, in Python loops over the images (thousands of tiny kernels and host syncs for a
batch of 256). Training batches repeat one grid, so :func:`cache_vision_indices` computes them
once per distinct grid with transformers' own functions and hands them in as the precomputed
kwargs those functions accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle
    from transformers import PreTrainedConfig

__all__ = ["NAME", "cache_vision_indices", "use_packed_vision_attention"]

# The kwargs the vision tower's forward takes (grid_thw, precomputed indices, ...).
_Kwargs = dict[str, object]
_HookResult = tuple[tuple[object, ...], _Kwargs]


class _VisionTower(Protocol):
    """What is read of Qwen2.5-VL's vision tower (``model.model.visual``)."""

    config: PreTrainedConfig
    spatial_merge_size: int
    window_size: int
    patch_size: int

    def register_forward_pre_hook(
        self,
        hook: Callable[[torch.nn.Module, tuple[object, ...], _Kwargs], _HookResult | None],
        *,
        with_kwargs: bool,
    ) -> RemovableHandle: ...

NAME = "flash_fleet_packed_sdpa"


def _packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **_kwargs: object,
) -> tuple[torch.Tensor, None]:
    """``[1, H, N, D]`` packed q/k/v in equal chunks -> ``[1, N, H, D]``, like flash-attn."""
    _, h, n, d = query.shape
    chunks = len(cu_seq_lens_q) - 1 if cu_seq_lens_q is not None else 1
    length = int(max_length_q) if max_length_q is not None else n
    if cu_seq_lens_q is not None and chunks * length != n:
        # Unequal chunks (mixed image sizes): attend chunk by chunk.
        bounds = cu_seq_lens_q.tolist()
        outs = [
            _packed_sdpa(
                module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scaling=scaling
            )[0]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return torch.cat(outs, dim=1), None

    def split(t: torch.Tensor) -> torch.Tensor:
        return t[0].view(h, chunks, length, d).transpose(0, 1)

    out = F.scaled_dot_product_attention(
        split(query), split(key), split(value), dropout_p=dropout, scale=scaling
    )
    return out.permute(0, 2, 1, 3).reshape(1, n, h, d), None


def use_packed_vision_attention(model: torch.nn.Module, enabled: bool = True) -> None:
    """Switch the vision tower of a Qwen2.5-VL model to the batched attention (or back)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, _packed_sdpa)
    cfg = cast("PreTrainedConfig", model.config).vision_config
    cfg._attn_implementation = NAME if enabled else "sdpa"


def cache_vision_indices(model: torch.nn.Module) -> Callable[[], None]:
    """Precompute the vision tower's per-grid indices once; returns a function that undoes it."""
    from transformers.utils.generic import get_max_seqlen
    from transformers.vision_utils import (
        get_vision_attention_seqlens,
        get_vision_position_ids,
        get_vision_window_index,
    )

    # nn.Module's attribute access is untyped (Tensor | Module): name what the hook reads.
    visual = cast(_VisionTower, cast(torch.nn.Module, model.model).visual)
    cache: dict[tuple[str, tuple[tuple[int, ...], ...]], _Kwargs] = {}

    def precompute(grid: torch.Tensor) -> _Kwargs:
        pos = get_vision_position_ids(grid, visual.spatial_merge_size)
        cu, max_len = get_vision_attention_seqlens(grid, visual.config)
        win, cu_win = get_vision_window_index(
            grid,
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        max_win = get_max_seqlen(cu_win, visual.config, kwarg_name="max_window_seqlen")
        out: _Kwargs = {
            "position_ids": pos,
            "cu_seqlens": cu,
            "window_index": win.to(grid.device),
            "cu_window_seqlens": cu_win,
        }
        # None means "not needed by this attention"; passing None would mean "compute it".
        lengths = {"max_seqlen": max_len, "max_window_seqlen": max_win}
        out.update({k: v for k, v in lengths.items() if v})
        return out

    def hook(
        _module: torch.nn.Module, args: tuple[object, ...], kwargs: _Kwargs
    ) -> _HookResult:
        grid = kwargs.get("grid_thw")
        precomputed = any(k in kwargs for k in ("position_ids", "window_index"))
        if not isinstance(grid, torch.Tensor) or precomputed:
            return args, kwargs
        key = (str(grid.device), tuple(map(tuple, grid.tolist())))
        if key not in cache:
            if len(cache) >= 8:  # training sees one or two grids; never grow without bound
                cache.pop(next(iter(cache)))
            cache[key] = precompute(grid)
        return args, {**kwargs, **cache[key]}

    handle = visual.register_forward_pre_hook(hook, with_kwargs=True)
    return handle.remove
