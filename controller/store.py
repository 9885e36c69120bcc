"""Hard state in Redis: what the operator changed at run time, rollouts and the audit log.

Everything the controller must not forget across a crash lives here and is written before the
change is acted on (pushed to agents); soft state (sessions, metrics) is rebuilt from agents.
Keys live under ``fleetvl:ctl:<namespace>:`` so tests and deployments never collide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TypedDict, cast

import redis.asyncio as aioredis

from fleetvl import redis_keys

__all__ = ["BundleInfo", "ControllerStore", "JsonObject"]

# A JSON object as stored (policy overrides, site specs, rollout states, audit entries): read
# back into pydantic models, or passed through to the admin API as is.
JsonObject = dict[str, object]


class BundleInfo(TypedDict, total=False):
    """A bundle registered at run time (uploaded through the admin API)."""

    name: str | None  # the upload's ``?name=``, None if not given
    url: str  # where agents download it (default: this controller's store)
    size: int  # bytes

AUDIT_MAX = 10_000  # entries kept; older ones are trimmed


class ControllerStore:
    """Async access to the controller's Redis keys (one instance per controller process)."""

    def __init__(self, url: str, namespace: str) -> None:
        # Bounded waits: a hung Redis must turn into a 503, not an admin call that never ends.
        self.redis = aioredis.from_url(
            url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=2.0
        )
        self.prefix = redis_keys.controller(namespace)

    def _k(self, name: str) -> str:
        return self.prefix + name

    async def _hash(self, name: str) -> dict[str, str]:
        # decode_responses=True: redis-py returns str, though its types also allow bytes.
        return cast("dict[str, str]", await self.redis.hgetall(self._k(name)))

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    # Policies: "global", "tenant:<id>", "site:<id>" -> JSON override (None: removed).
    async def policies(self) -> dict[str, JsonObject]:
        return {k: json.loads(v) for k, v in (await self._hash("policies")).items()}

    async def set_policy(self, key: str, value: Mapping[str, object] | None) -> int:
        """Store one level's policy and return the new fleet policy version."""
        async with self.redis.pipeline(transaction=True) as p:
            if value is None:
                p.hdel(self._k("policies"), key)
            else:
                p.hset(self._k("policies"), key, json.dumps(value, sort_keys=True))
            p.incr(self._k("policy_version"))
            res = await p.execute()
        return int(res[-1])

    async def bump_policy_version(self) -> int:
        return int(await self.redis.incr(self._k("policy_version")))

    async def policy_version(self) -> int:
        return int(await self.redis.get(self._k("policy_version")) or 0)

    # Bundle assignments made at run time (admin API, rollouts): site -> digest.
    async def assignments(self) -> dict[str, str]:
        return await self._hash("assign")

    async def set_assignments(self, changes: dict[str, str | None]) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            for site, digest in changes.items():
                if digest is None:
                    p.hdel(self._k("assign"), site)
                else:
                    p.hset(self._k("assign"), site, digest)
            await p.execute()

    # Bundles registered at run time: digest -> {"name", "url", "size"}.
    async def bundles(self) -> dict[str, BundleInfo]:
        return {k: json.loads(v) for k, v in (await self._hash("bundles")).items()}

    async def put_bundle(self, digest: str, info: BundleInfo) -> None:
        await self.redis.hset(self._k("bundles"), digest, json.dumps(info, sort_keys=True))

    # Sites added at run time (admin API): id -> SiteSpec JSON.
    async def sites(self) -> dict[str, JsonObject]:
        return {k: json.loads(v) for k, v in (await self._hash("sites")).items()}

    async def put_site(self, site_id: str, value: Mapping[str, object] | None) -> None:
        if value is None:
            await self.redis.hdel(self._k("sites"), site_id)
        else:
            await self.redis.hset(self._k("sites"), site_id, json.dumps(value, sort_keys=True))

    # Rollouts: id -> state JSON (controller.rollout.RolloutState).
    async def rollouts(self) -> dict[str, JsonObject]:
        return {k: json.loads(v) for k, v in (await self._hash("rollouts")).items()}

    async def put_rollout(self, rollout_id: str, state: Mapping[str, object]) -> None:
        await self.redis.hset(self._k("rollouts"), rollout_id, json.dumps(state, sort_keys=True))

    async def add_rollout(self, rollout_id: str, state: Mapping[str, object]) -> bool:
        """Create a rollout unless one with this id exists; True if created."""
        return bool(await self.redis.hsetnx(self._k("rollouts"), rollout_id, json.dumps(state)))

    # Audit log: every state change with who and why, newest last.
    async def audit(self, who: str, what: str, why: str = "", **details: object) -> JsonObject:
        entry: JsonObject = {"ts": time.time(), "who": who, "what": what, "why": why, **details}
        async with self.redis.pipeline(transaction=False) as p:
            p.rpush(self._k("audit"), json.dumps(entry, sort_keys=True, default=str))
            p.ltrim(self._k("audit"), -AUDIT_MAX, -1)
            await p.execute()
        return entry

    async def audit_log(self, limit: int = 100) -> list[JsonObject]:
        raw = cast("list[str]", await self.redis.lrange(self._k("audit"), -limit, -1))
        return [json.loads(r) for r in raw]

    async def drop_all(self) -> None:
        """Delete every key of this namespace (tests' cleanup)."""
        keys = [k async for k in self.redis.scan_iter(match=self.prefix + "*")]
        if keys:
            await self.redis.delete(*keys)
