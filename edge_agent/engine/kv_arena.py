"""The decoder's KV cache: one preallocated buffer per layer, shared by past and present.

GroupQueryAttention on CPU writes the new keys/values in place when a layer's ``past`` and
``present`` are the same buffer (onnxruntime-genai's ``past_present_share_buffer``), so a
decode step moves only the new token's KV: no per-token reallocation or copy of the cache.
Buffers are NumPy arrays wrapped as OrtValues without copying, so a cached prefix is loaded
(and exported) with a slice assignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

__all__ = ["KVArena", "KVPrefix"]


@dataclass
class KVPrefix:
    """KV of the first ``num_tokens`` prompt tokens; ``keys[layer]`` is ``[kv_heads, n, hd]``."""

    num_tokens: int
    keys: list[np.ndarray]
    values: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values, strict=True))


class KVArena:
    """Fixed-capacity KV buffers for one sequence."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, capacity: int) -> None:
        self.capacity = capacity
        shape = (1, kv_heads, capacity, head_dim)
        self.keys = [np.zeros(shape, dtype=np.float32) for _ in range(num_layers)]
        self.values = [np.zeros(shape, dtype=np.float32) for _ in range(num_layers)]
        self._key_ov = [ort.OrtValue.ortvalue_from_numpy(k) for k in self.keys]
        self._value_ov = [ort.OrtValue.ortvalue_from_numpy(v) for v in self.values]

    def bind(self, binding: ort.IOBinding) -> None:
        """Bind every layer's buffer as both its past input and its present output."""
        for i, (k, v) in enumerate(zip(self._key_ov, self._value_ov, strict=True)):
            binding.bind_ortvalue_input(f"past_key_values.{i}.key", k)
            binding.bind_ortvalue_input(f"past_key_values.{i}.value", v)
            binding.bind_ortvalue_output(f"present.{i}.key", k)
            binding.bind_ortvalue_output(f"present.{i}.value", v)

    def load(self, prefix: KVPrefix) -> None:
        n = prefix.num_tokens
        if n > self.capacity:
            raise ValueError(f"prefix of {n} tokens exceeds the KV capacity {self.capacity}")
        if len(prefix.keys) != len(self.keys):
            raise ValueError(f"prefix has {len(prefix.keys)} layers, the model {len(self.keys)}")
        for dst, src in zip(self.keys, prefix.keys, strict=True):
            dst[0, :, :n] = src
        for dst, src in zip(self.values, prefix.values, strict=True):
            dst[0, :, :n] = src

    def export(self, num_tokens: int) -> KVPrefix:
        return KVPrefix(
            num_tokens=num_tokens,
            keys=[k[0, :, :num_tokens].copy() for k in self.keys],
            values=[v[0, :, :num_tokens].copy() for v in self.values],
        )
