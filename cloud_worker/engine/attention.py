"""Attention kernels the cloud engine uses instead of transformers' generic paths.

* :func:`gqa_decode_attention` — one query token per slot against that slot's KV span,
  grouped-query attention without materializing repeated keys/values. transformers' SDPA path
  calls ``repeat_kv`` whenever a mask is given, which copies every layer's K and V
  ``num_heads / kv_heads`` times per decode step (7x for Qwen2.5-VL-7B): extra bytes on a step
  that is bound by bytes.
* :func:`varlen_vision_attention` — Qwen-VL's vision tower attends within windows (and, in a
  few layers, within whole images). Without flash-attention transformers runs one SDPA call
  per window: a 448x448 image has 16 windows, so a batch of 8 images costs ~3,600 small
  launches per prefill. This groups equal-length segments into one batched SDPA call each.
  It is registered under a name containing "flash" because that is how transformers decides
  to hand the attention function the packed sequence boundaries (``cu_seq_lens_q``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["VISION_ATTENTION", "gqa_decode_attention", "use_varlen_vision_attention"]

VISION_ATTENTION = "fleetvl_flash_varlen_sdpa"


def gqa_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``q`` ``[B, H, 1, D]``; ``k``/``v`` ``[B, KVH, S, D]``; ``mask`` bool ``[B, 1, 1, S]``
    (True = attend). Returns ``[B, 1, H * D]``, softmax in float32."""
    b, h, _, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, kvh, h // kvh, d)  # heads of one KV group side by side
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scaling  # [B, KVH, G, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)  # [B, KVH, G, D]
    return out.reshape(b, 1, h * d)


def _varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """Block-diagonal attention over packed segments: ``query`` ``[1, H, N, D]`` holding
    segments bounded by ``cu_seq_lens_q``; returns ``[1, N, H, D]`` (flash layout)."""
    if cu_seq_lens_q is None:
        raise ValueError("varlen vision attention needs cu_seq_lens_q")
    n, heads, d = query.shape[2], query.shape[1], query.shape[3]
    out = torch.empty(1, n, heads, d, dtype=query.dtype, device=query.device)
    for length, idx in _segments(cu_seq_lens_q):
        segs = idx.numel() // length

        def take(
            t: torch.Tensor, idx: torch.Tensor = idx, segs: int = segs, n: int = length
        ) -> torch.Tensor:
            return t[0, :, idx].reshape(t.shape[1], segs, n, t.shape[3]).transpose(0, 1)

        o = F.scaled_dot_product_attention(take(query), take(key), take(value), scale=scaling)
        out[0, idx] = o.permute(0, 2, 1, 3).reshape(segs * length, heads, d)
    return out, None


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(length, token indices of every segment of that length)`` for each length.

    One vision forward passes the same boundary tensor to every windowed layer (and another
    to the full-attention ones): the grouping is kept on that tensor object, so it is done
    once per forward, not per layer (reading the boundaries is a device-to-host sync).
    """
    groups = getattr(cu_seqlens, "_fleetvl_segments", None)
    if groups is None:
        bounds = cu_seqlens.tolist()
        by_len: dict[int, list[int]] = {}
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            if end > start:
                by_len.setdefault(end - start, []).append(start)
        dev = cu_seqlens.device
        groups = [
            (length, (torch.tensor(starts, device=dev)[:, None]
                      + torch.arange(length, device=dev)[None, :]).reshape(-1))
            for length, starts in by_len.items()
        ]  # fmt: skip
        cu_seqlens._fleetvl_segments = groups  # type: ignore[attr-defined]
    return groups


def use_varlen_vision_attention(model: torch.nn.Module) -> bool:
    """Route the vision tower's attention through :func:`_varlen_attention` (transformers'
    attention registry), leaving the language model on SDPA. Returns False when the installed
    transformers lacks the registry (the vision tower then keeps its per-window path)."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(VISION_ATTENTION, _varlen_attention)
    vision_cfg = getattr(model.config, "vision_config", None)
    if vision_cfg is None:
        return False
    vision_cfg._attn_implementation = VISION_ATTENTION
    return True
