"""Redis caches keyed by content and namespaced by bundle digest. Filled by the cache issue."""
