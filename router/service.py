"""The router's core, shared by the HTTP and gRPC front ends.

Per request: resolve the SLA policy (global < tenant < site < request), work out which
backends residency allows, admit through the deadline-aware scheduler (or refuse at once with
the predicted and allowed times), wait for a slot, stream from the backend with the deadline
enforced between events, and feed what was measured back to the predictor.

The scheduler is pure and single-threaded: every call into it happens on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence

from fleetvl.cache.answers import AnswerCache
from fleetvl.errors import (
    NO_ANSWER_CACHE,
    FleetVLError,
    ModelNotFound,
    NotCached,
)
from fleetvl.policy import Residency, ResolvedPolicy, SlaPolicy, resolve_policy
from fleetvl.protocol.request import ChatRequest
from fleetvl.scheduling import (
    AdmissionDecision,
    BackendSpec,
    ObservedTimings,
    Scheduler,
    WorkItem,
)
from router import metrics
from router.backends import Backend, BackendError, BackendRequest, Delta, Final
from router.config import RouterConfig
from router.tickets import Expired, Rejected, Ticket

__all__ = ["RouterService"]

log = logging.getLogger("fleetvl.router")


class RouterService:
    def __init__(
        self,
        config: RouterConfig,
        backends: Sequence[Backend],
        clock: Callable[[], float] = time.monotonic,
        answers: AnswerCache | None = None,
    ) -> None:
        self.config = config
        self.answers = answers
        self.clock = clock
        # Replaced whole by the controller's routing state when the router watches it.
        self.policies = config.policies
        self.backends = {b.name: b for b in backends}
        specs = {c.name: c for c in config.backends}
        self.scheduler = Scheduler(
            [
                BackendSpec(name=b.name, slots=b.slots, predictor=specs[b.name].predictor)
                if b.name in specs
                else BackendSpec(name=b.name, slots=b.slots)
                for b in backends
            ],
            clock,
            config=config.scheduler,
        )
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._ids = itertools.count()
        self._expiry_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._expiry_task is None:
            self._expiry_task = asyncio.create_task(self._expiry_loop(), name="router-expiry")

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
        for b in self.backends.values():
            await b.close()

    def add_backend(self, backend: Backend) -> None:
        """A backend that appears at run time (a site's agent the controller added)."""
        self.scheduler.add_backend(BackendSpec(name=backend.name, slots=backend.slots))
        self.backends[backend.name] = backend

    def models(self) -> list[str]:
        return sorted({m for b in self.backends.values() for m in b.models})

    def served_models(self) -> list[str] | None:
        """The models requests may name; None when a backend takes any model."""
        if any(not b.models for b in self.backends.values()):
            return None
        return self.models()

    @property
    def ready(self) -> bool:
        return any(b.kind == "cloud" for b in self.backends.values())

    # -- admission --------------------------------------------------------------------------

    def resolve(self, req: ChatRequest) -> ResolvedPolicy:
        """Policy for ``req``; raises PolicyError (HTTP 422) if it loosens residency."""
        p = self.policies
        return resolve_policy(
            p.global_,
            tenant=p.tenants.get(req.tenant),
            site=p.sites.get(req.site) if req.site else None,
            request=req.sla,
        )

    def eligible(self, req: ChatRequest, residency: Residency) -> tuple[set[str], set[str]]:
        """(edge, cloud) backends serving ``req.model`` that residency allows."""
        edge, cloud = set(), set()
        for b in self.backends.values():
            if b.models and req.model not in b.models:
                continue
            if not getattr(b, "available", True):  # e.g. a site agent not connected now
                continue
            if b.kind == "edge" and req.site is not None and b.site == req.site:
                if residency is not Residency.CLOUD_ONLY:
                    edge.add(b.name)
            elif b.kind == "cloud" and residency.allows_cloud:
                cloud.add(b.name)
        return edge, cloud

    async def admit(self, req: ChatRequest) -> Ticket:
        """:meth:`submit`, after the answer cache: a deterministic request answered before is
        answered from it at once (no slot taken, nothing taught to the predictor). A
        ``cache_only`` request (a site agent asking before it runs its own model) that misses
        raises :class:`NotCached` (gRPC NOT_FOUND). Residency decides first: an
        ``edge_only`` request never reads an answer the cloud wrote."""
        resolved = self._prepare(req)
        hit = await self._cached(req, resolved.policy)
        if hit is not None:
            t = Ticket(req, resolved, None, None, self.clock(), None, cached=hit)
            t.outcome.kind = t.outcome.backend = "cache"
            return t
        if req.cache_only:  # a router without the cache says so: its agents stop asking
            raise NotCached() if self.answers else NotCached("no_answer_cache", NO_ANSWER_CACHE)
        return self.submit(req, resolved)

    async def _cached(self, req: ChatRequest, pol: SlaPolicy) -> Final | None:
        if self.answers is None or not pol.residency.allows_cloud:
            return None
        stored = await self.answers.get(req, pol.cache)
        metrics.ANSWER_CACHE.labels("hit" if stored else "miss").inc()
        if stored is None:
            return None
        conf = stored.get("confidence", {}).get("mean_logprob")
        return Final(
            text=stored["text"], finish_reason=stored["finish_reason"], confidence=conf,
            confidence_signal="mean_logprob", prompt_tokens=0,
            completion_tokens=len(stored["token_ids"]), served_by="cache",
        )  # fmt: skip

    def _prepare(self, req: ChatRequest) -> ResolvedPolicy:
        """Resolve ``req``'s policy, check its model is served, cap its answer by the policy
        (what the cloud worker runs, and what the answer cache is keyed by)."""
        resolved = self.resolve(req)
        if not any(req.model in b.models or not b.models for b in self.backends.values()):
            raise ModelNotFound(req.model, self.models())
        req.capped(resolved.policy.max_output_tokens)
        return resolved

    def submit(self, req: ChatRequest, resolved: ResolvedPolicy | None = None) -> Ticket:
        """Resolve (unless ``resolved`` is given), pick backends and admit; raises
        Rejected/PolicyError/InputError at once."""
        now = self.clock()
        resolved = resolved or self._prepare(req)
        pol = resolved.policy
        max_tokens = req.params.max_tokens
        deadline_s = pol.deadline_ms / 1000.0
        if req.deadline_s is not None:
            deadline_s = min(deadline_s, req.deadline_s)
        edge, cloud = self.eligible(req, pol.residency)
        if req.edge_attempt is not None:
            edge = set()  # an escalation from a site's agent never goes back to an edge box
        item_id = req.id or f"r{next(self._ids)}"
        # prefer_edge: the site's agent if it can meet the deadline, else the cloud.
        tiers = [edge, cloud] if pol.residency is Residency.PREFER_EDGE else [edge | cloud]
        tiers = [t for t in tiers if t]
        if not tiers:
            reason = "no_eligible_backend"
            metrics.REJECTIONS.labels(reason).inc()
            where = "the site's edge agent" if pol.residency is Residency.EDGE_ONLY else "any"
            raise Rejected(
                None,
                reason,
                f"no backend for model {req.model!r} is allowed by residency "
                f"{pol.residency.value!r} ({where} backend needed; site={req.site!r})",
            )
        decision: AdmissionDecision | None = None
        item: WorkItem | None = None
        for names in tiers:
            item = WorkItem(
                id=item_id,
                eligible=frozenset(names),
                priority=pol.priority,
                arrival=now,
                deadline=now + deadline_s,
                prompt_tokens=req.prompt_tokens_estimate,
                image_tokens=req.image_tokens,
                max_output_tokens=max_tokens,
            )
            decision = self.scheduler.admit(item)
            if decision.accepted:
                break
        assert decision is not None
        assert item is not None
        if not decision.accepted:
            reason = str(decision.reason)
            metrics.REJECTIONS.labels(reason).inc()
            pred = f"{decision.predicted_s * 1000:.0f} ms" if decision.predicted_s else "n/a"
            raise Rejected(
                decision,
                reason,
                f"{reason}: predicted completion {pred}, deadline allows "
                f"{decision.allowed_s * 1000:.0f} ms",
            )
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[item.id] = fut
        metrics.INFLIGHT.inc()
        ticket = Ticket(req, resolved, item, decision, now, fut)
        self._pump()
        return ticket

    # -- running ----------------------------------------------------------------------------

    async def run(self, t: Ticket) -> AsyncGenerator[Delta | Final, None]:
        """Events of an admitted request. Raises Expired when its deadline passes."""
        if t.cached is not None:
            t.outcome.ttft_s = t.outcome.total_s = self.clock() - t.started
            yield Delta(t.cached.text, 0)
            yield t.cached
            return
        item = t.item
        assert item is not None  # admitted: not a cache answer
        assert t.slot is not None
        try:
            try:
                name = await t.slot
            except asyncio.CancelledError:
                self.scheduler.cancel(item.id)  # the client went away while queued
                raise
            backend = self.backends[name]
            if t.policy.policy.residency is Residency.EDGE_ONLY and backend.kind != "edge":
                # Eligibility makes this impossible; refuse loudly rather than trust it.
                metrics.RESIDENCY_VIOLATIONS.inc()
                self.scheduler.complete(item, None)
                raise Rejected(None, "residency", "edge_only request reached a cloud backend")
            metrics.BACKEND_REQUESTS.labels(name, backend.kind).inc()
            start = self.clock()
            t.outcome.backend, t.outcome.kind = name, backend.kind
            t.outcome.queue_s = start - t.started
            metrics.QUEUE.observe(t.outcome.queue_s)
            async for ev in self._stream(t, item, backend, start):
                yield ev
        finally:
            t.outcome.total_s = self.clock() - t.started
            self._waiting.pop(item.id, None)
            metrics.INFLIGHT.dec()

    async def _stream(
        self, t: Ticket, item: WorkItem, backend: Backend, start: float
    ) -> AsyncGenerator[Delta | Final, None]:
        r = t.req
        breq = BackendRequest(item.id, r, t.policy.policy, item.deadline)
        gen = backend.generate(breq)
        final: Final | None = None
        first: float | None = None
        sent, index = "", 0
        try:
            while True:
                left = item.deadline - self.clock()
                if left <= 0:
                    raise TimeoutError
                try:
                    ev = await asyncio.wait_for(gen.__anext__(), left)
                except StopAsyncIteration:
                    break
                if first is None:
                    first = self.clock()
                    t.outcome.ttft_s = first - t.started
                if isinstance(ev, Final):
                    final = ev
                    if ev.verdict == "unanswerable":
                        metrics.UNANSWERABLE.labels(backend.name).inc()
                    # A detokenizer holds back a trailing partial UTF-8 character; the final
                    # text has it (as U+FFFD). Streamed text must add up to the answer.
                    if ev.text.startswith(sent) and len(ev.text) > len(sent):
                        yield Delta(ev.text[len(sent) :], index, None)
                else:
                    sent += ev.text
                    index = ev.index + 1
                yield ev
        except TimeoutError:
            breq.cancel.set()
            raise Expired(
                "deadline_exceeded",
                f"deadline of {(item.deadline - t.started) * 1000:.0f} ms passed while "
                f"{backend.name} was generating",
            ) from None
        except asyncio.CancelledError:
            breq.cancel.set()  # client disconnected mid-stream
            self.scheduler.cancel(item.id)
            raise
        except (FleetVLError, BackendError):
            raise
        except Exception as exc:
            log.exception("backend %s failed", backend.name)
            raise BackendError(f"backend {backend.name} failed: {type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(Exception):
                await gen.aclose()
            observed = None
            # A refusal generated nothing: learning from it would teach the predictor that
            # answers are short and fast.
            if final is not None and final.verdict != "unanswerable":
                ttft = final.ttft_s or ((first or self.clock()) - start)
                total = max(self.clock() - start, ttft)
                observed = ObservedTimings(ttft, total, final.completion_tokens)
            with contextlib.suppress(KeyError):
                self.scheduler.complete(item, observed)
            self._pump()

    # -- scheduler plumbing -----------------------------------------------------------------

    def _pump(self) -> None:
        """Hand free slots to the best queued items (call after every state change)."""
        for name in self.scheduler.backends:
            while self.scheduler.free_slots(name) > 0:
                item = self.scheduler.next_for(name)
                if item is None:
                    break
                fut = self._waiting.get(item.id)
                if fut is None or fut.done():
                    self.scheduler.complete(item, None)  # its client is gone
                    continue
                fut.set_result(name)
        self._fail_expired()

    def _fail_expired(self) -> None:
        for item in self.scheduler.expire():
            fut = self._waiting.get(item.id)
            if fut is not None and not fut.done():
                fut.set_exception(
                    Expired(
                        item.expiry_reason or "deadline_passed",
                        f"dropped from the queue: {item.expiry_reason or 'deadline passed'}",
                    )
                )

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_interval_s)
            try:
                self._pump()
            except Exception:  # the loop must outlive any one bad state
                log.exception("expiry pass failed")
