"""Vision-encoder outputs by image digest (one MGET for all of a prompt's images)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fleetvl.cache import metrics
from fleetvl.cache.codec import CacheEntryError, EntryKind, Value, decode_value, encode_value
from fleetvl.cache.config import CacheConfig
from fleetvl.cache.keys import Namespace
from fleetvl.cache.store import RedisStore

__all__ = ["VisionCache"]


class VisionCache:
    kind = "vision"

    def __init__(
        self, store: RedisStore, ns: Namespace, hidden_size: int, config: CacheConfig
    ) -> None:
        self.store = store
        self.ns = ns
        self.hidden = hidden_size
        self.fmt = config.vision_format
        self.dtype = np.float32 if self.fmt == "fp32" else np.float16
        self.ttl = config.ttl_vision_s
        row = hidden_size * np.dtype(self.dtype).itemsize
        self.rows_per_part = max(1, (config.max_value_bytes - 512) // row)

    def nbytes(self, n_tokens: int) -> int:
        return n_tokens * self.hidden * np.dtype(self.dtype).itemsize

    def _parts(self, n_tokens: int) -> list[tuple[int, int]]:
        r = self.rows_per_part
        return [(a, min(a + r, n_tokens)) for a in range(0, n_tokens, r)]

    def get_many(self, images: Sequence[tuple[str, int]]) -> dict[int, np.ndarray] | None:
        """Features for ``(digest, n_tokens)`` pairs that are stored, by position in ``images``."""
        if not images:
            return {}
        t0 = time.perf_counter()
        plan = []
        keys: list[str] = []
        for i, (digest, n) in enumerate(images):
            parts = self._parts(n)
            plan.append((i, digest, n, len(keys), parts))
            keys += [self.ns.vision(self.fmt, digest, p) for p in range(len(parts))]
        raw = self.store.mget(keys)
        if raw is None:
            return None
        out: dict[int, np.ndarray] = {}
        for i, _digest, n, first, parts in plan:
            chunk = [c for c in raw[first : first + len(parts)] if c is not None]
            if len(chunk) != len(parts):
                metrics.MISSES.labels(self.kind).inc()
                continue
            try:
                feats = np.empty((n, self.hidden), np.float32)
                for p, ((a, z), data) in enumerate(zip(parts, chunk, strict=True)):
                    key = keys[first + p]
                    v = decode_value(key, data, EntryKind.VISION)
                    arr = v.arrays[0]
                    if (v.part, v.n_parts) != (p, len(parts)) or arr.shape != (z - a, self.hidden):
                        raise CacheEntryError("bad_shape", f"vision part {p} of shape {arr.shape}")
                    feats[a:z] = arr
            except CacheEntryError as exc:
                metrics.REJECTED.labels(self.kind, exc.reason).inc()
                self.store.delete(keys[first : first + len(parts)])
                continue
            metrics.HITS.labels(self.kind).inc()
            metrics.BYTES_READ.labels(self.kind).inc(sum(len(c) for c in chunk))
            out[i] = feats
        metrics.FETCH_SECONDS.labels(self.kind).observe(time.perf_counter() - t0)
        return out

    def put_async(self, digest: str, features: np.ndarray) -> bool:
        n = features.shape[0]

        def job() -> None:
            parts = self._parts(n)
            items = []
            for p, (a, z) in enumerate(parts):
                key = self.ns.vision(self.fmt, digest, p)
                arr = features[a:z].astype(self.dtype, copy=False)
                items.append(
                    (
                        key,
                        encode_value(
                            key, Value(EntryKind.VISION, [arr], part=p, n_parts=len(parts))
                        ),
                    )
                )
            if self.store.set_many(items, self.ttl):
                metrics.BYTES_WRITTEN.labels(self.kind).inc(sum(len(v) for _, v in items))

        return self.store.submit(job)
