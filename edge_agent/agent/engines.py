"""The box's engines and the local queue in front of them.

One engine per concurrent request (an engine owns one KV arena). Requests wait in the shared
deadline-aware scheduler (:mod:`fleetvl.scheduling`, one backend ``local`` with as many slots
as engines): critical before standard before batch, earliest deadline first, and refused at
once when the local engines are predicted to miss the deadline, so the caller can escalate
instead of waiting.

Hot swap (:meth:`EnginePool.swap`): the new bundle's engines are built beside the old ones;
requests admitted afterwards get new engines, requests holding an old engine finish on it, and
old engines are dropped as they are returned. Nothing in flight is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.agent.local import LocalEngine
from fleetvl.errors import FleetVLError, Unavailable
from fleetvl.policy import CacheMode, Residency, SlaPolicy
from fleetvl.scheduling import (
    AdmissionDecision,
    BackendSpec,
    ObservedTimings,
    Scheduler,
    SchedulerConfig,
    WorkItem,
)
from fleetvl.vlm.calibration import Calibration, load_calibration, load_scope
from fleetvl.vlm.scope import ScopeModel

__all__ = ["LOCAL", "EnginePool", "Lease", "LocalRejected", "engine_for", "with_cache"]

log = logging.getLogger("fleetvl.edge")

LOCAL = "local"

LocalEngineFactory = Callable[[Path, int], LocalEngine]


def default_factory(bundle: Path, threads: int) -> LocalEngine:
    from edge_agent.engine import EdgeEngine, SessionConfig

    return EdgeEngine(bundle, SessionConfig(intra_op_threads=threads))


def with_cache(
    factory: LocalEngineFactory, redis_url: str | None, tenant: str
) -> LocalEngineFactory:
    """``factory`` with the prefix-KV and vision cache in front of each edge engine it builds
    (one Redis client for all of them); ``factory`` itself when no Redis is configured."""
    from fleetvl.cache import CacheConfig, FleetCache

    config = CacheConfig.for_service(redis_url)
    if config is None:
        return factory
    cache = FleetCache(config)

    def build(bundle: Path, threads: int) -> LocalEngine:
        from edge_agent.engine import CachedEngine, EdgeEngine

        engine = factory(bundle, threads)
        return CachedEngine(engine, cache, tenant) if isinstance(engine, EdgeEngine) else engine

    return build


def engine_for(engine: LocalEngine, pol: SlaPolicy, site_local_cache: bool) -> LocalEngine:
    """The leased engine as this request's policy may use the cache: not at all when its
    ``cache`` is off, or when it is ``edge_only`` and the cache is not the site's own (its
    image's KV must not leave the site); reading only when its ``cache`` is ``read``."""
    from edge_agent.engine import CachedEngine

    if not isinstance(engine, CachedEngine):
        return engine
    if pol.cache is CacheMode.OFF or (
        pol.residency is Residency.EDGE_ONLY and not site_local_cache
    ):
        return engine.engine
    return engine.using("read") if pol.cache is CacheMode.READ else engine


class LocalRejected(Unavailable):
    """The local engines cannot take this request in time (queue full or deadline)."""

    def __init__(self, decision: AdmissionDecision | None, reason: str) -> None:
        self.decision = decision
        pred = decision.predicted_s if decision else None
        allowed = decision.allowed_s if decision else None
        detail = (
            f": predicted {pred * 1000:.0f} ms, deadline allows {allowed * 1000:.0f} ms"
            if pred is not None and allowed is not None
            else ""
        )
        super().__init__(reason, f"local engines refused the request ({reason}){detail}",
                         decision.retry_after_s if decision else None)  # fmt: skip


@dataclass
class Lease:
    """An engine held by one request, with what the scheduler needs back."""

    engine: LocalEngine
    generation: int
    item: WorkItem
    started: float
    observed: ObservedTimings | None = None


@dataclass
class _Generation:
    number: int
    bundle: Path
    digest: str
    calibration: Calibration | None
    scope: ScopeModel | None  # the bundle's out-of-scope score (from its calibration)
    free: list[LocalEngine]


class EnginePool:
    def __init__(
        self,
        bundle: Path,
        engines: int,
        *,
        threads: int = 0,
        max_queue: int = 64,
        factory: LocalEngineFactory = default_factory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = engines
        self.threads = threads
        self.factory = factory
        self.clock = clock
        self.scheduler = Scheduler(
            [BackendSpec(name=LOCAL, slots=engines)],
            clock,
            config=SchedulerConfig(max_queue=max_queue, work_stealing=False),
        )
        self._current = self._build(bundle, 0)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._swap_lock = asyncio.Lock()

    def _build(self, bundle: Path, number: int) -> _Generation:
        engines = [self.factory(Path(bundle), self.threads) for _ in range(self.size)]
        cal = load_calibration(Path(bundle))
        return _Generation(
            number, Path(bundle), engines[0].digest, cal, load_scope(Path(bundle), cal), engines
        )

    @property
    def digest(self) -> str:
        return self._current.digest

    @property
    def bundle(self) -> Path:
        return self._current.bundle

    @property
    def calibration(self) -> Calibration | None:
        return self._current.calibration

    @property
    def scope(self) -> ScopeModel | None:
        return self._current.scope

    def reload_calibration(self) -> None:
        """Re-read the current bundle's calibration and scope model (after ``fleetvl
        calibrate``)."""
        cal = load_calibration(self._current.bundle)
        scope = load_scope(self._current.bundle, cal)
        self._current.calibration, self._current.scope = cal, scope

    async def swap(self, bundle: Path) -> None:
        """Serve ``bundle`` from now on without interrupting requests in flight.

        Raises:
            BundleError (or anything the engine raises) when the bundle cannot be loaded; the
            current engines stay in service then.
        """
        async with self._swap_lock:
            number = self._current.number + 1
            new = await asyncio.to_thread(self._build, bundle, number)
            old, self._current = self._current, new
            old.free.clear()  # idle old engines go now; leased ones when returned
            log.info("serving bundle %s (%s)", new.digest[:16], bundle)
            self._pump()

    # -- the queue --------------------------------------------------------------------------

    def admit(self, item_id: str, policy: SlaPolicy, deadline: float, tokens: int) -> WorkItem:
        """Queue a request for an engine; raises LocalRejected at once if it cannot be served
        in time (the caller may escalate instead)."""
        now = self.clock()
        item = WorkItem(
            id=item_id,
            eligible=frozenset({LOCAL}),
            priority=policy.priority,
            arrival=now,
            deadline=deadline,
            prompt_tokens=tokens,
            max_output_tokens=policy.max_output_tokens,
        )
        decision = self.scheduler.admit(item)
        if not decision.accepted:
            raise LocalRejected(decision, str(decision.reason))
        self._waiting[item.id] = asyncio.get_running_loop().create_future()
        self._pump()
        return item

    @contextlib.asynccontextmanager
    async def lease(self, item: WorkItem) -> AsyncIterator[Lease]:
        """Wait for the item's turn and hold an engine for the block's duration.

        Report what was measured with :meth:`observe` before leaving the block.
        """
        fut = self._waiting[item.id]
        try:
            await fut
        except asyncio.CancelledError:
            self.scheduler.cancel(item.id)
            self._waiting.pop(item.id, None)
            raise
        except FleetVLError:
            self._waiting.pop(item.id, None)
            raise
        gen = self._current
        lease = Lease(gen.free.pop(), gen.number, item, self.clock())
        try:
            yield lease
        finally:
            self._waiting.pop(item.id, None)
            if lease.generation == self._current.number:
                self._current.free.append(lease.engine)
            with contextlib.suppress(KeyError):
                self.scheduler.complete(item, lease.observed)
            self._pump()

    @staticmethod
    def observe(lease: Lease, ttft_s: float, total_s: float, tokens: int) -> None:
        lease.observed = ObservedTimings(ttft_s, max(total_s, ttft_s), tokens)

    def _pump(self) -> None:
        free = len(self._current.free)
        while free > 0 and self.scheduler.free_slots(LOCAL) > 0:
            item = self.scheduler.next_for(LOCAL)
            if item is None:
                break
            fut = self._waiting.get(item.id)
            if fut is None or fut.done():
                self.scheduler.complete(item, None)
                continue
            fut.set_result(None)
            free -= 1
        for item in self.scheduler.expire():
            fut = self._waiting.get(item.id)
            if fut is not None and not fut.done():
                fut.set_exception(LocalRejected(None, item.expiry_reason or "deadline_passed"))

    def queued(self) -> int:
        return len(self.scheduler.queued(LOCAL))
