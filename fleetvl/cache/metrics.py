"""Prometheus metrics of the shared cache (process-wide, labelled by entry kind)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HITS = Counter("fleetvl_cache_hits_total", "Cache lookups that found an entry", ["kind"])
MISSES = Counter("fleetvl_cache_misses_total", "Cache lookups that found nothing", ["kind"])
HIT_TOKENS = Counter(
    "fleetvl_cache_hit_tokens_total", "Prompt tokens whose KV came from the cache", ["kind"]
)
BYTES_READ = Counter("fleetvl_cache_read_bytes_total", "Value bytes read from Redis", ["kind"])
BYTES_WRITTEN = Counter(
    "fleetvl_cache_written_bytes_total", "Value bytes written to Redis", ["kind"]
)
REJECTED = Counter(
    "fleetvl_cache_rejected_total",
    "Entries rejected as corrupt or foreign (then deleted and recomputed)",
    ["kind", "reason"],
)
DECISIONS = Counter(
    "fleetvl_cache_decisions_total",
    "Fetch-or-recompute choices on a cache hit",
    ["kind", "choice"],
)
ERRORS = Counter("fleetvl_cache_errors_total", "Redis operations that failed or timed out", ["op"])
BYPASSED = Counter(
    "fleetvl_cache_bypassed_total",
    "Operations skipped because Redis was marked unavailable (backing off)",
    ["op"],
)
WRITES_DROPPED = Counter(
    "fleetvl_cache_writes_dropped_total", "Async writes dropped because the queue was full"
)
AVAILABLE = Gauge("fleetvl_cache_available", "1 when Redis answered the last operation")
FETCH_SECONDS = Histogram(
    "fleetvl_cache_fetch_seconds",
    "Time to fetch and decode a cache hit",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
