"""Image blobs shared across tiers: an escalation sends a digest, bytes only if missing.

Blobs are keyed by the SHA-256 of their bytes (not of decoded pixels: the cloud decodes and
preprocesses with its own settings), so ``get`` verifies what it returns against the key.
Large images are split into parts under ``max_value_bytes``; part 0's header gives the count.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fleetvl.cache import metrics
from fleetvl.cache.codec import CacheEntryError, EntryKind, Value, decode_value, encode_value
from fleetvl.cache.config import CacheConfig
from fleetvl.cache.keys import image_key
from fleetvl.cache.store import RedisStore

__all__ = ["ImageBlobStore", "blob_digest"]


def blob_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageBlobStore:
    kind = "image"

    def __init__(self, store: RedisStore, config: CacheConfig, tenant: str | None = None) -> None:
        self.store = store
        self.tenant = tenant
        self.ttl = config.ttl_image_s
        self.part_bytes = config.max_value_bytes - 512

    def put(self, data: bytes) -> str | None:
        """Store ``data`` (synchronously: a caller then sends the digest); its digest or None."""
        digest = blob_digest(data)
        n = max(1, -(-len(data) // self.part_bytes))
        items = []
        for p in range(n):
            key = image_key(digest, p, self.tenant)
            chunk = np.frombuffer(data, np.uint8)[p * self.part_bytes : (p + 1) * self.part_bytes]
            items.append(
                (key, encode_value(key, Value(EntryKind.IMAGE, [chunk], part=p, n_parts=n)))
            )
        if not self.store.set_many(items, self.ttl):
            return None
        metrics.BYTES_WRITTEN.labels(self.kind).inc(sum(len(v) for _, v in items))
        return digest

    def get(self, digest: str) -> bytes | None:
        key0 = image_key(digest, 0, self.tenant)
        first = self.store.mget([key0])
        if not first or first[0] is None:
            if first is not None:
                metrics.MISSES.labels(self.kind).inc()
            return None
        try:
            v0 = decode_value(key0, first[0], EntryKind.IMAGE)
            keys = [image_key(digest, p, self.tenant) for p in range(1, v0.n_parts)]
            rest = self.store.mget(keys) if keys else []
            if rest is None:
                return None
            chunks = [v0.arrays[0].tobytes()]
            for p, (key, raw) in enumerate(zip(keys, rest, strict=True), start=1):
                if raw is None:
                    metrics.MISSES.labels(self.kind).inc()
                    return None
                v = decode_value(key, raw, EntryKind.IMAGE)
                if (v.part, v.n_parts) != (p, v0.n_parts):
                    raise CacheEntryError("bad_header", f"part {v.part}/{v.n_parts}")
                chunks.append(v.arrays[0].tobytes())
            data = b"".join(chunks)
            if blob_digest(data) != digest:
                raise CacheEntryError("digest_mismatch", "image bytes do not match their digest")
        except CacheEntryError as exc:
            metrics.REJECTED.labels(self.kind, exc.reason).inc()
            self.store.delete([key0])
            return None
        metrics.HITS.labels(self.kind).inc()
        metrics.BYTES_READ.labels(self.kind).inc(len(data))
        return data
