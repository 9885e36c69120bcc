"""The chart's Redis, run for real with the arguments the chart renders: under memory pressure
from the shared cache it evicts cache entries and keeps the controller's hard state.

One Redis holds both (docs/cache.md, docs/controller.md). Every cache entry is written with a
TTL; the controller's policies, assignments and rollouts have none. The chart's default
``volatile-lru`` therefore evicts only cache entries; this test fills a small Redis with real
image blobs through ``FleetCache`` and checks that a policy written through the real
``ControllerStore`` is still there, and that the same workload under ``allkeys-lru`` (refused
by the chart's schema) does lose it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.redis_servers import RedisServer

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the `chart` extra")
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed here"
)

ROOT = Path(__file__).resolve().parents[2]
VALUES = {
    "secrets": {
        "controllerAdminToken": "adm-0123456789abcdef",
        "routerApiKeys": {"sk-test-1": "t"},
    },
    "tls": {"enabled": False},
    # Small enough that a few hundred image blobs overflow it.
    "redis": {"bundled": {"maxmemory": "4mb"}},
}


def _chart_redis_args(tmp_path: Path) -> list[str]:
    with helm.Chart.load(str(ROOT / "helm" / "fleetvl")) as chart:
        manifests = chart.render(values=VALUES, name="t", namespace="t")
    sts = next(
        d
        for d in yaml.safe_load_all(manifests["fleetvl/templates/redis.yaml"])
        if d and d["kind"] == "StatefulSet"
    )
    args: list[str] = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    # Keep every setting except where it listens and persists (the harness sets those).
    out: list[str] = []
    pairs = iter(args)
    for flag in pairs:
        value = next(pairs)
        if flag == "--dir":
            out += [flag, str(tmp_path)]
        elif flag not in ("--port", "--save", "--appendonly"):
            out += [flag, value]
    return out


def _fill_and_check(url: str, namespace: str) -> tuple[dict[str, Any], int]:
    from controller.store import ControllerStore
    from fleetvl.cache import CacheConfig, FleetCache

    async def write_policy() -> None:
        store = ControllerStore(url, namespace)
        await store.set_policy("site:sub-leeds-01", {"residency": "edge_only"})
        await store.close()

    async def read_policies() -> dict[str, Any]:
        store = ControllerStore(url, namespace)
        try:
            return await store.policies()
        finally:
            await store.close()

    asyncio.run(write_policy())
    images = FleetCache(CacheConfig(url=url)).images("tenant-evict-test")
    stored = 0
    for _ in range(600):  # ~19 MB of 32 KiB blobs into a 4 MB Redis
        if images.put(os.urandom(32 * 1024)) is not None:
            stored += 1
    return asyncio.run(read_policies()), stored


def test_chart_redis_evicts_cache_entries_and_keeps_controller_state(tmp_path: Path) -> None:
    args = _chart_redis_args(tmp_path)
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"
    server = RedisServer(None, *args).start()
    try:
        policies, stored = _fill_and_check(server.url, "evict-test")
        info = server_info(server)
    finally:
        server.stop()
    assert info["evicted_keys"] > 0  # the cache really overflowed
    assert stored > 500  # and every write was taken (older entries evicted, none refused)
    assert policies == {"site:sub-leeds-01": {"residency": "edge_only"}}


def test_allkeys_lru_would_lose_the_controller_state(tmp_path: Path) -> None:
    """Why the schema refuses allkeys-*: the same workload evicts the policy."""
    args = _chart_redis_args(tmp_path)
    args[args.index("--maxmemory-policy") + 1] = "allkeys-lru"
    server = RedisServer(None, *args).start()
    try:
        policies, _ = _fill_and_check(server.url, "evict-test")
    finally:
        server.stop()
    assert policies == {}


def server_info(server: RedisServer) -> dict[str, Any]:
    import redis

    return redis.Redis.from_url(server.url).info("stats")
