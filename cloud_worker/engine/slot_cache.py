"""KV cache for continuous batching: one row ("slot") per running request.

``keys[layer]`` is ``[slots, kv_heads, capacity, head_dim]``, preallocated once. A decode step
writes each slot's new key/value at that slot's own length (``write_pos``) and attends over
the first ``span`` positions with a per-slot mask, so requests of different lengths share one
batched step with static shapes (which CUDA graphs need). Transformers' decoder layers call
:meth:`update` exactly as they would on their own caches, so the model code is theirs.
"""

from __future__ import annotations

import torch

__all__ = ["SlotCache"]


class SlotCache:
    def __init__(
        self,
        num_layers: int,
        slots: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.slots = slots
        self.capacity = capacity
        self.rows = torch.arange(slots, device=device)
        # Set before each step (static buffers: a captured graph reads them in place).
        self.write_pos = torch.zeros(slots, dtype=torch.long, device=device)
        self.span = capacity

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *_: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step's K/V ``[slots, kv_heads, 1, head_dim]``; return the attended span."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[self.rows, :, self.write_pos] = key_states[:, :, 0]
        v[self.rows, :, self.write_pos] = value_states[:, :, 0]
        return k[:, :, : self.span], v[:, :, : self.span]

    def load(self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Place a prefilled prompt's KV (per layer ``[kv_heads, n, head_dim]``) in ``slot``."""
        n = keys[0].shape[1]
        if n > self.capacity:
            raise ValueError(f"{n} tokens exceed the slot capacity {self.capacity}")
        for dst, src in zip(self.keys, keys, strict=True):
            dst[slot, :, :n] = src
        for dst, src in zip(self.values, values, strict=True):
            dst[slot, :, :n] = src
