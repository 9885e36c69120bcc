"""Idempotency keys on ``Generate``: a replayed request is answered, never dispatched twice.

Site agents replay spooled escalations after an outage; an agent killed after the router
answered but before it recorded the answer sends the same request again. The first request
with a key runs; requests with the same key that arrive while it runs wait for it; later ones
get the recorded ``Final`` (``replayed=True``) without reaching a backend. A failed first run
records nothing, so a retry dispatches again.

Runs in progress are tracked in this process's memory, bounded by ``max_entries`` (least
recently used go first) and ``ttl_s``. Recorded answers are also written to Redis when the
router has a ``redis_url`` (:class:`RedisFinals`), so a replay that reaches a restarted router,
or another replica, is still answered from the record. Without Redis, or while it is out, a
router restart forgets the record and such a replay is dispatched again (at-least-once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.redis_keys import IDEMPOTENCY

__all__ = ["FinalStore", "IdempotencyRecord", "RedisFinals", "Slot"]

log = logging.getLogger("fleetvl.router")


class FinalStore(Protocol):
    """Where recorded answers outlive this process. Never raises: a store that cannot answer
    says ``None`` (the request then runs: at-least-once, never lost)."""

    async def get(self, tenant: str, key: str) -> pb.Final | None: ...

    async def put(self, tenant: str, key: str, final: pb.Final, ttl_s: float) -> None: ...


class RedisFinals:
    """Recorded answers in Redis: ``fleetvl:idem:v1:<tenant hash>:<key hash>`` -> the
    ``Final``'s protobuf bytes, expiring with the record's TTL. Calls are bounded by a short
    socket timeout; failures are logged and counted, never raised."""

    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        import redis.asyncio as aioredis

        self._r = aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                          socket_connect_timeout=timeout_s)  # fmt: skip

    @staticmethod
    def _key(tenant: str, key: str) -> str:
        t = hashlib.sha256(tenant.encode()).hexdigest()[:16]
        return f"{IDEMPOTENCY}:{t}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def get(self, tenant: str, key: str) -> pb.Final | None:
        try:
            raw = await self._r.get(self._key(tenant, key))
        except Exception as exc:  # an outage means at-least-once, not a failed request
            _store_error("get", exc)
            return None
        if raw is None:
            return None
        final = pb.Final()
        try:
            final.ParseFromString(raw if isinstance(raw, bytes) else raw.encode())
        except Exception as exc:
            _store_error("parse", exc)
            return None
        return final

    async def put(self, tenant: str, key: str, final: pb.Final, ttl_s: float) -> None:
        try:
            await self._r.set(self._key(tenant, key), final.SerializeToString(),
                              ex=max(int(ttl_s), 1))  # fmt: skip
        except Exception as exc:
            _store_error("put", exc)

    async def close(self) -> None:
        await self._r.aclose()


def _store_error(op: str, exc: Exception) -> None:
    from router import metrics

    metrics.IDEMPOTENCY_STORE_ERRORS.labels(op=op).inc()
    log.warning("idempotency store %s failed: %s", op, exc)


@dataclass
class Slot:
    """One key: a run in progress (``final`` unset) or a recorded answer."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    final: pb.Final | None = None
    at: float = 0.0


class IdempotencyRecord:
    def __init__(
        self,
        max_entries: int = 100_000,
        ttl_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        store: FinalStore | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self.store = store
        self._slots: OrderedDict[tuple[str, str], Slot] = OrderedDict()
        self._writes: set[asyncio.Task[None]] = set()

    async def claim(self, tenant: str, key: str) -> tuple[bool, Slot]:
        """``(True, slot)`` when the caller must run the request and then :meth:`finish` it;
        ``(False, slot)`` with ``slot.final`` set when it was answered already. Waits while
        another request with the key runs; if that run fails, the caller becomes the runner.
        """
        k = (tenant, key)
        while True:
            self._evict()
            slot = self._slots.get(k)
            if slot is None:
                slot = self._slots[k] = Slot(at=self.clock())
                stored = await self.store.get(tenant, key) if self.store else None
                if stored is None:
                    return True, slot
                # Answered before this process's time (a restart, another replica).
                self.finish(tenant, key, slot, stored, persist=False)
                return False, slot
            if slot.final is not None:
                self._slots.move_to_end(k)
                return False, slot
            await slot.done.wait()

    def finish(
        self, tenant: str, key: str, slot: Slot, final: pb.Final | None, persist: bool = True
    ) -> None:
        """Record the answer (``None``: the run failed; the key is free again)."""
        k = (tenant, key)
        if final is None:
            if self._slots.get(k) is slot:
                del self._slots[k]
        else:
            slot.final = final
            slot.at = self.clock()
            if persist and self.store is not None:
                task = asyncio.get_running_loop().create_task(
                    self.store.put(tenant, key, final, self.ttl_s)
                )
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)
        slot.done.set()

    def __len__(self) -> int:
        return len(self._slots)

    def _evict(self) -> None:
        cutoff = self.clock() - self.ttl_s
        while self._slots:
            k, oldest = next(iter(self._slots.items()))
            if len(self._slots) <= self.max_entries and oldest.at >= cutoff:
                break
            if oldest.final is None and len(self._slots) <= self.max_entries:
                break  # a run in progress is never dropped for age
            del self._slots[k]
            oldest.done.set()
