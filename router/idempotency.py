"""Idempotency keys on ``Generate``: a replayed request is answered, never dispatched twice.

Site agents replay spooled escalations after an outage; an agent killed after the router
answered but before it recorded the answer sends the same request again. The first request
with a key runs; requests with the same key that arrive while it runs wait for it; later ones
get the recorded ``Final`` (``replayed=True``) without reaching a backend. A failed first run
records nothing, so a retry dispatches again.

The record is in this process's memory, bounded by ``max_entries`` (least recently used go
first) and ``ttl_s``: a router restart forgets it. Spool replays are answered exactly once as
long as the router that answered stays up for the agent's retry window; across a router
restart a replay of an answer that never reached the agent is dispatched again (at-least-once).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetvl.protocol import fleetvl_pb2 as pb

__all__ = ["IdempotencyRecord", "Slot"]


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
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._slots: OrderedDict[tuple[str, str], Slot] = OrderedDict()

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
                return True, slot
            if slot.final is not None:
                self._slots.move_to_end(k)
                return False, slot
            await slot.done.wait()

    def finish(self, tenant: str, key: str, slot: Slot, final: pb.Final | None) -> None:
        """Record the answer (``None``: the run failed; the key is free again)."""
        k = (tenant, key)
        if final is None:
            if self._slots.get(k) is slot:
                del self._slots[k]
        else:
            slot.final = final
            slot.at = self.clock()
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
