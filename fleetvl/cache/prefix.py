"""Prefix KV blocks in Redis: longest-prefix lookup in two round trips, async stores.

Round trip 1 pipelines STRLEN over every layer-range key of every candidate block: it finds
the longest run of complete blocks and their size without moving KV bytes, so the
fetch-or-recompute choice is made before paying for the fetch. Round trip 2 is one MGET of
the chosen blocks. A block that fails verification ends the prefix there (rejected, counted,
deleted); the rest of the prompt is simply prefilled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleetvl.cache import metrics
from fleetvl.cache.codec import CacheEntryError, EntryKind, Value, decode_value, encode_value
from fleetvl.cache.config import CacheConfig
from fleetvl.cache.keys import Namespace
from fleetvl.cache.kv_quant import bytes_per_token, dequantize, quantize
from fleetvl.cache.store import RedisStore

__all__ = ["KVShape", "PrefixHit", "PrefixKVCache", "PrefixPlan"]

_HEADER_ALLOWANCE = 512


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    kv_heads: int
    head_dim: int


@dataclass
class PrefixPlan:
    hashes: list[bytes]  # candidate blocks, in prompt order
    blocks: int  # leading blocks fully present
    nbytes: int  # their stored size
    lookup_s: float
    block_size: int

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size


@dataclass
class PrefixHit:
    """Dequantized KV of the first ``num_tokens`` tokens; ``keys[l]`` is ``[kv_heads, n, hd]``."""

    num_tokens: int
    keys: list[np.ndarray]
    values: list[np.ndarray]
    nbytes: int
    fetch_s: float


class PrefixKVCache:
    kind = "kv"

    def __init__(
        self, store: RedisStore, ns: Namespace, shape: KVShape, config: CacheConfig
    ) -> None:
        self.store = store
        self.ns = ns
        self.shape = shape
        self.block = config.block_size
        self.fmt = config.kv_format
        self.ttl = config.ttl_kv_s
        per_layer = bytes_per_token(self.fmt, 1, shape.kv_heads, shape.head_dim, self.block)
        layer_bytes = math.ceil(per_layer * self.block) + _HEADER_ALLOWANCE
        if layer_bytes > config.max_value_bytes:
            raise ValueError(
                f"one layer of a {self.block}-token KV block is {layer_bytes} bytes, over "
                f"max_value_bytes={config.max_value_bytes}: use a smaller block_size"
            )
        per_part = max(1, config.max_value_bytes // layer_bytes)
        self.parts = [
            (a, min(a + per_part, shape.num_layers)) for a in range(0, shape.num_layers, per_part)
        ]

    def bytes_per_token(self) -> float:
        s = self.shape
        return bytes_per_token(self.fmt, s.num_layers, s.kv_heads, s.head_dim, self.block)

    def _keys(self, h: bytes) -> list[str]:
        return [self.ns.kv(self.fmt, self.block, h, p) for p in self.parts]

    def plan(self, hashes: Sequence[bytes]) -> PrefixPlan | None:
        """How many leading blocks are stored; None when Redis is unavailable."""
        t0 = time.perf_counter()
        keys = [k for h in hashes for k in self._keys(h)]
        sizes = self.store.strlen_many(keys)
        if sizes is None:
            return None
        n = len(self.parts)
        blocks = nbytes = 0
        for b in range(len(hashes)):
            row = sizes[b * n : (b + 1) * n]
            if not all(row):
                break
            blocks += 1
            nbytes += sum(row)
        plan = PrefixPlan(list(hashes), blocks, nbytes, time.perf_counter() - t0, self.block)
        if hashes:
            (metrics.HITS if blocks else metrics.MISSES).labels(self.kind).inc()
        return plan

    def fetch(self, plan: PrefixPlan) -> PrefixHit | None:
        """Fetch the plan's blocks; a corrupt block truncates the prefix there."""
        t0 = time.perf_counter()
        keys = [k for h in plan.hashes[: plan.blocks] for k in self._keys(h)]
        raw = self.store.mget(keys)
        if raw is None:
            return None
        s, n, B = self.shape, len(self.parts), self.block
        out_k = np.empty((s.num_layers, s.kv_heads, plan.blocks * B, s.head_dim), np.float32)
        out_v = np.empty_like(out_k)
        good = nbytes = 0
        for b in range(plan.blocks):
            try:
                for (a, z), key, data in zip(
                    self.parts, keys[b * n : (b + 1) * n], raw[b * n : (b + 1) * n], strict=True
                ):
                    if data is None:  # evicted between the two round trips
                        raise _Gone
                    k, v = self._decode(key, data, a, z)
                    out_k[a:z, :, b * B : (b + 1) * B] = k
                    out_v[a:z, :, b * B : (b + 1) * B] = v
                    nbytes += len(data)
            except _Gone:
                break
            except CacheEntryError as exc:
                metrics.REJECTED.labels(self.kind, exc.reason).inc()
                self.store.delete(keys[b * n : (b + 1) * n])
                break
            good += 1
        metrics.BYTES_READ.labels(self.kind).inc(nbytes)
        if not good:
            return None
        dt = time.perf_counter() - t0
        metrics.FETCH_SECONDS.labels(self.kind).observe(dt)
        metrics.HIT_TOKENS.labels(self.kind).inc(good * B)
        t = good * B
        return PrefixHit(t, list(out_k[:, :, :t]), list(out_v[:, :, :t]), nbytes=nbytes, fetch_s=dt)

    def _decode(self, key: str, data: bytes, a: int, z: int) -> tuple[np.ndarray, np.ndarray]:
        value = decode_value(key, data, EntryKind.KV)
        if (value.layer_start, value.layer_end) != (a, z):
            raise CacheEntryError("bad_shape", f"layers {value.layer_start}-{value.layer_end}")
        k, v = dequantize(value.arrays, value.quant)
        s = self.shape
        if k.shape != (z - a, s.kv_heads, self.block, s.head_dim):
            raise CacheEntryError("bad_shape", f"KV block of shape {k.shape}")
        return k, v

    def encode_blocks(
        self,
        hashes: Sequence[bytes],
        keys: Sequence[np.ndarray],
        values: Sequence[np.ndarray],
        first_block: int,
    ) -> list[tuple[str, bytes]]:
        """Values for blocks ``first_block..len(hashes)`` of per-layer ``[H, n, hd]`` KV."""
        k_all = np.stack(keys)  # [L, H, n, D]
        v_all = np.stack(values)
        items = []
        B = self.block
        for b in range(first_block, len(hashes)):
            for (a, z), key in zip(self.parts, self._keys(hashes[b]), strict=True):
                arrays, quant = quantize(
                    k_all[a:z, :, b * B : (b + 1) * B], v_all[a:z, :, b * B : (b + 1) * B], self.fmt
                )
                value = Value(EntryKind.KV, arrays, quant, layer_start=a, layer_end=z)
                items.append((key, encode_value(key, value)))
        return items

    def store_async(
        self,
        hashes: Sequence[bytes],
        keys: Sequence[np.ndarray],
        values: Sequence[np.ndarray],
        first_block: int,
    ) -> bool:
        """Quantize, encode and write on the writer thread; the arrays must not change after."""
        if first_block >= len(hashes):
            return False

        def job() -> None:
            items = self.encode_blocks(hashes, keys, values, first_block)
            if self.store.set_many(items, self.ttl):
                metrics.BYTES_WRITTEN.labels(self.kind).inc(sum(len(v) for _, v in items))

        return self.store.submit(job)


class _Gone(Exception):
    pass
