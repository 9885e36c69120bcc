"""The shared Redis cache: prefix KV blocks, vision embeddings, responses and image blobs.

One :class:`FleetCache` per process (one connection pool, one writer thread);
:meth:`FleetCache.for_model` gives the entries of one model bundle, optionally isolated per
tenant. Redis being down or slow never fails a request: lookups return nothing and the
engine recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetvl.cache.codec import CacheEntryError
from fleetvl.cache.config import CacheConfig
from fleetvl.cache.cost import CostModel, Decision
from fleetvl.cache.images import ImageBlobStore, blob_digest
from fleetvl.cache.keys import ImageSpan, Namespace, block_hashes, request_digest
from fleetvl.cache.prefix import KVShape, PrefixHit, PrefixKVCache, PrefixPlan
from fleetvl.cache.responses import ResponseCache
from fleetvl.cache.store import RedisStore
from fleetvl.cache.vision import VisionCache

__all__ = [
    "CacheConfig",
    "CacheEntryError",
    "CostModel",
    "Decision",
    "FleetCache",
    "ImageBlobStore",
    "ImageSpan",
    "KVShape",
    "ModelCache",
    "Namespace",
    "PrefixHit",
    "PrefixPlan",
    "blob_digest",
    "block_hashes",
    "request_digest",
]


@dataclass
class ModelCache:
    """Entries of one model bundle (and tenant, when isolated) plus its cost estimates."""

    namespace: Namespace
    prefix: PrefixKVCache
    vision: VisionCache
    responses: ResponseCache
    cost: CostModel


class FleetCache:
    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config or CacheConfig.from_env()
        self.store = RedisStore(self.config)

    def for_model(
        self, model_digest: str, kv: KVShape, hidden_size: int, tenant: str | None = None
    ) -> ModelCache:
        ns = Namespace(model_digest, tenant)
        return ModelCache(
            namespace=ns,
            prefix=PrefixKVCache(self.store, ns, kv, self.config),
            vision=VisionCache(self.store, ns, hidden_size, self.config),
            responses=ResponseCache(self.store, ns, self.config),
            cost=CostModel(self.config),
        )

    def images(self, tenant: str | None = None) -> ImageBlobStore:
        return ImageBlobStore(self.store, self.config, tenant)

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self.store.flush(timeout_s)

    def close(self) -> None:
        self.store.close()
