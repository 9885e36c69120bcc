"""Cache settings, from code or the environment (``FLEETVL_REDIS_URL``, ``FLEETVL_CACHE_*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from fleetvl.cache.kv_quant import KV_FORMATS, KVFormat
from fleetvl.settings import REDIS_URL, SERVICE_PREFIXES

__all__ = ["CacheConfig"]

MiB = 1 << 20
PREFIX = SERVICE_PREFIXES["cache"]


@dataclass(frozen=True)
class CacheConfig:
    """How the engines use the shared Redis.

    Redis itself should run with ``maxmemory`` set and ``maxmemory-policy allkeys-lru``
    (see docs/cache.md): entries also carry TTLs, but memory is bounded by eviction.
    """

    url: str = "redis://127.0.0.1:6379/0"  # redis:// or rediss://, password in the URL
    # Every Redis call is bounded: a slow or dead server costs at most this per request.
    op_timeout_s: float = 0.5
    connect_timeout_s: float = 0.25
    # After a failure the cache is bypassed for a backoff that doubles up to the maximum;
    # the next call after it reconnects (redis-py reopens pooled connections on demand).
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    # Values above this are split (KV by layer range, others by rows/bytes): large values
    # block Redis' single thread and its replication buffers.
    max_value_bytes: int = 1 * MiB
    block_size: int = 64  # prefix KV block, tokens
    kv_format: KVFormat = "fp16"  # fp32 (exact) | fp16 | int8
    vision_format: str = "fp32"  # fp32 | fp16
    ttl_kv_s: int = 3600
    ttl_vision_s: int = 3600
    ttl_response_s: int = 600
    ttl_image_s: int = 86400
    write_queue: int = 64  # pending async writes; more are dropped (counted)
    # "auto": fetch a hit only when the cost model says it beats recomputing; "always" and
    # "never" override it (e.g. to pin behaviour while measuring).
    fetch_policy: str = "auto"
    # Fetch-or-recompute priors, replaced by measurements (EWMA) after the first requests.
    prior_prefill_s_per_token: float = 0.002
    prior_vision_s_per_token: float = 0.002
    prior_fetch_s_per_mib: float = 0.01
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"cache URL must be redis://, rediss:// or unix://, got {self.url!r}")
        if self.kv_format not in KV_FORMATS:
            raise ValueError(f"kv_format must be one of {KV_FORMATS}, got {self.kv_format!r}")
        if self.vision_format not in ("fp32", "fp16"):
            raise ValueError(f"vision_format must be fp32 or fp16, got {self.vision_format!r}")
        if self.fetch_policy not in ("auto", "always", "never"):
            raise ValueError(f"fetch_policy must be auto, always or never: {self.fetch_policy!r}")
        if self.block_size < 1 or self.max_value_bytes < 64 * 1024:
            raise ValueError("block_size must be >= 1 and max_value_bytes >= 64 KiB")
        if self.op_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("cache timeouts must be positive")

    @classmethod
    def for_service(
        cls, redis_url: str | None, environ: Mapping[str, str] | None = None
    ) -> CacheConfig | None:
        """A service's cache: ``FLEETVL_REDIS_URL`` over its config's ``redis_url``, the
        ``FLEETVL_CACHE_*`` fields on top; None when neither names a Redis (no cache)."""
        env = os.environ if environ is None else environ
        if not (env.get(REDIS_URL) or redis_url):
            return None
        return cls.from_env(env, **({} if env.get(REDIS_URL) else {"url": redis_url}))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> CacheConfig:
        """The one settings convention (:mod:`fleetvl.settings`): ``FLEETVL_REDIS_URL`` as
        ``url``, ``FLEETVL_CACHE_<FIELD>`` for any other field (``FLEETVL_CACHE_KV_FORMAT``);
        ``overrides`` last.

        Raises:
            ValueError: a ``FLEETVL_CACHE_*`` variable names no field, or its value does not
                parse as the field's type.
        """
        env = os.environ if environ is None else environ
        types = {f.name: f.type for f in fields(cls) if f.name != "extra"}
        values: dict[str, object] = {}
        if url := env.get(REDIS_URL):
            values["url"] = url
        for key in sorted(k for k in env if k.startswith(PREFIX)):
            name = key.removeprefix(PREFIX).lower()
            if name not in types:
                raise ValueError(f"{key}: CacheConfig has no field {name!r}")
            kind = str(types[name])
            raw = env[key]
            try:
                values[name] = float(raw) if kind == "float" else int(raw) if kind == "int" else raw
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a {kind}") from None
        return replace(cls(), **values, **overrides)  # type: ignore[arg-type]
