"""The site agent's core: local answer, gate, early escalation, escalation, store-and-forward.

Per request (flows 1-3 of the architecture):

1. resolve the SLA policy (global < tenant < site < request; the layers may be pushed by the
   controller);
2. unless ``cloud_only``: queue for a local engine (refused at once when the engines cannot
   make the deadline: then escalate) and generate under the gate, stopping early when the
   answer can no longer pass or cannot finish in time — but only while escalating is allowed
   and the remaining budget still affords a cloud round trip;
3. release the local answer if it passes the gate within the deadline (``served_by: edge``);
   if it fails and escalating is impossible (``edge_only``, no budget), release it flagged
   ``low_confidence``;
4. else escalate over gRPC (digests first, the edge attempt attached, deadline propagated,
   idempotency key = request id) and stream the cloud's answer back;
5. uplink down (or the cloud unreachable): ``on_uplink_down`` decides — the local answer
   flagged ``low_confidence``, the durable spool (202 + id) or an error.

Before any answer, the bundle's out-of-scope score judges the input (a covered, dark or
misaimed camera, another kind of scene). Out of scope,
``on_out_of_scope`` decides: ``refuse`` answers at once with the verdict ``unanswerable``
(and its reason), ``escalate`` lets the cloud model judge it by its own score (refused there
too if it agrees; refused here when escalating is not possible). Each verdict is counted per
image source and kept in :attr:`AgentService.health` for the controller's health alerts.

``edge_only`` requests never reach :meth:`_escalate` (checked, and counted if it ever failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from edge_agent.agent import metrics
from edge_agent.agent.answers import Answer, Piece, Queued, gate_dict
from edge_agent.agent.cache_probe import CacheHit, first_answer, probe_cache
from edge_agent.agent.config import AgentConfig
from edge_agent.agent.engines import EnginePool, LocalRejected, engine_for
from edge_agent.agent.escalation import CloudClient, EscalationError
from edge_agent.agent.local import LocalAttempt, run_local
from edge_agent.agent.requests import to_generate_request
from edge_agent.agent.scope_verdicts import count_verdict, frozen_verdict, unanswerable
from edge_agent.agent.source_health import SourceHealth
from edge_agent.agent.spool import Spool, SpoolFull
from fleetvl.errors import StorageFull, Unavailable, UpstreamError
from fleetvl.policy import (
    OutOfScopeAction,
    PolicyOverride,
    Residency,
    ResolvedPolicy,
    SlaPolicy,
    UplinkDownAction,
    resolve_policy,
)
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import delta_logprob
from fleetvl.protocol.request import ChatRequest
from fleetvl.sampling import CancelToken
from fleetvl.vlm.gate import Gate

__all__ = ["AgentService"]

log = logging.getLogger("fleetvl.edge")

Event = Piece | Answer | Queued


class AgentService:
    def __init__(
        self,
        config: AgentConfig,
        pool: EnginePool,
        spool: Spool,
        cloud: CloudClient | None,
        link_up: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.pool = pool
        self.spool = spool
        self.cloud = cloud
        self.link_up = link_up
        self.clock = clock
        self.layers = config.policies
        rtt = config.router.cloud_rtt_ms if config.router else 300.0
        self.cloud_rtt_s = rtt / 1000.0  # EWMA of measured escalations, seeded by config
        self.residency_violations = 0  # edge_only requests that reached the escalation path
        self.cloud_calls = 0
        self.spool_wakeup = asyncio.Event()
        # Recent out-of-scope verdicts per image source (sent to the controller).
        self.health = SourceHealth()
        # Called with (total_ms, ok, served_by, met_deadline) per finished request.
        self.observers: list[Callable[[float, bool, str, bool], None]] = []

    def report(self, total_ms: float, ok: bool, served_by: str, met: bool) -> None:
        for observe in self.observers:
            observe(total_ms, ok, served_by, met)

    async def run_local(
        self, req: ChatRequest, pol: SlaPolicy, deadline: float, early: bool = False
    ) -> LocalAttempt:
        """A local attempt under the policy's gate, never escalated (site-bound calls)."""
        return await self._local(req, pol, deadline, self.gate(pol.min_confidence),
                                 lambda _now: False, early=early)  # fmt: skip

    # -- policy and gate --------------------------------------------------------------------

    def set_policies(self, global_: SlaPolicy, tenant: PolicyOverride | None,
                     site: PolicyOverride | None) -> None:  # fmt: skip
        self.layers = self.layers.model_copy(
            update={"global_": global_, "tenant": tenant, "site": site}
        )

    def resolve(self, sla: PolicyOverride | None) -> ResolvedPolicy:
        """Raises PolicyError (HTTP 422) when the request loosens residency."""
        lay = self.layers
        return resolve_policy(lay.global_, tenant=lay.tenant, site=lay.site, request=sla)

    def gate(self, min_confidence: float) -> Gate:
        """The gate for a policy's ``min_confidence``: through the bundle's calibration when it
        has one for the signal (min_confidence = accuracy asked of released answers)."""
        g = self.config.gate
        cal = self.pool.calibration
        threshold = min_confidence
        if g.threshold_source == "calibration" and cal is not None and g.signal in cal.signals:
            threshold = cal.signals[g.signal].threshold_for_accuracy(min_confidence)
        return Gate(g.signal, threshold, cal.probe if cal is not None else None)

    def affordable(self, now: float, deadline: float) -> bool:
        """Whether the remaining budget still pays for a cloud round trip."""
        return deadline - now >= self.cloud_rtt_s

    # -- a request --------------------------------------------------------------------------

    async def handle(self, req: ChatRequest) -> AsyncIterator[Event]:
        """Pieces of text (cloud answers stream), then one :class:`Answer` or :class:`Queued`.

        Raises:
            Unavailable, UpstreamError, StorageFull: refused, with a reason
                (:mod:`fleetvl.errors`; the front maps them to statuses).
            PolicyError / InputError: bad request (HTTP 4xx).
        """
        resolved = self.resolve(req.sla)
        pol = resolved.policy
        deadline = req.arrival + pol.deadline_ms / 1000.0
        req.capped(pol.max_output_tokens)
        res = pol.residency
        if res is Residency.CLOUD_ONLY:
            async for ev in self._escalate(req, resolved, deadline, None, "cloud_only"):
                yield ev
            return
        gate = self.gate(pol.min_confidence)
        uplink_ok = self.cloud is not None and self.link_up()
        def can_escalate(now: float) -> bool:
            if not res.allows_cloud or self.cloud is None:
                return False
            if uplink_ok:
                return self.affordable(now, deadline)
            # Link down: spooling needs no budget, failing needs no answer; only answer_local
            # wants the local answer finished.
            return pol.on_uplink_down is not UplinkDownAction.ANSWER_LOCAL

        unchanged_s = self.health.unchanged(req.source, "|".join(req.digests))
        probe = (probe_cache(self.cloud, req, pol, self.config, deadline - self.clock())
                 if uplink_ok and self.cloud is not None else None)  # fmt: skip
        try:
            first = await first_answer(
                probe, self._local(req, pol, deadline, gate, can_escalate, early=True))
        except LocalRejected:
            if not can_escalate(self.clock()):
                raise
            async for ev in self._escalate(req, resolved, deadline, None, "local_busy"):
                yield ev
            return
        if isinstance(first, CacheHit):
            yield self._cloud_answer(req, resolved, None, "cached", first.final, first.took_s)
            return
        attempt = frozen_verdict(first, unchanged_s, self.config.gate.frozen_after_s)
        count_verdict(self.config.site, self.health, req, attempt)
        if attempt.out_of_scope:
            if pol.on_out_of_scope is OutOfScopeAction.ESCALATE and can_escalate(self.clock()):
                async for ev in self._escalate(req, resolved, deadline, attempt, "out_of_scope"):
                    yield ev
                return
            yield self._unanswerable(req, resolved, attempt)
            return
        now = self.clock()
        v = attempt.verdict
        metrics.GATE.labels(v.signal, str(v.passed).lower()).inc()
        if attempt.stopped:
            metrics.EARLY_STOPS.labels(attempt.stopped).inc()
        if v.passed and attempt.complete and now <= deadline:
            yield self._local_answer(req, resolved, attempt)
            return
        reason = attempt.stopped or ("low_confidence" if not v.passed else "deadline")
        if not can_escalate(now) and attempt.complete:
            # edge_only, an unaffordable round trip, or the policy says answer locally.
            yield self._local_answer(req, resolved, attempt, flag=reason)
            return
        async for ev in self._escalate(req, resolved, deadline, attempt, reason):
            yield ev

    async def _local(
        self,
        req: ChatRequest,
        pol: SlaPolicy,
        deadline: float,
        gate: Gate,
        can_escalate: Callable[[float], bool],
        early: bool,
    ) -> LocalAttempt:
        item = self.pool.admit(req.id + (":l" if early else ":f"), pol, deadline,
                               req.prompt_tokens_estimate)  # fmt: skip
        metrics.LOCAL_QUEUE.set(self.pool.queued())
        cancel = CancelToken()
        async with self.pool.lease(item) as lease:
            work = asyncio.ensure_future(asyncio.to_thread(
                run_local, engine_for(lease.engine, pol, self.config.redis_site_local),
                req.messages, [i.decoded or i.data for i in req.images],
                req.params, gate,
                deadline=deadline, can_escalate=can_escalate,
                early=early and self.config.gate.early_escalation, cancel=cancel,
                clock=self.clock, scope=self.pool.scope,
            ))  # fmt: skip
            try:
                attempt = await asyncio.shield(work)
            except asyncio.CancelledError:
                # The client left: stop at the next token; the engine goes back once free.
                cancel.cancel()
                with contextlib.suppress(Exception):
                    await work
                raise
            self.pool.observe(lease, attempt.ttft_s, attempt.total_s, attempt.tokens)
        metrics.LOCAL_TOKENS.inc(attempt.tokens)
        return attempt

    def _local_answer(
        self, req: ChatRequest, resolved: ResolvedPolicy, a: LocalAttempt, flag: str | None = None
    ) -> Answer:
        v = a.verdict
        return Answer(
            id=req.id,
            model=req.model,
            text=a.text,
            finish_reason=a.finish_reason if flag is None else "low_confidence",
            served_by="edge",
            confidence=v.value,
            signal=v.signal,
            threshold=v.threshold,
            meets_min_confidence=v.passed,
            escalation_reason=None,
            low_confidence=flag is not None,
            local_tokens=a.tokens,
            local_max_tokens=a.max_tokens,
            prompt_tokens=a.prompt_tokens,
            completion_tokens=a.tokens,
            timings_ms=self._timings(req, local_s=a.total_s, local_ttft_s=a.ttft_s),
            policy=resolved.explain(),
            backend=f"edge:{self.config.site}",
            gate=gate_dict(v),
            out_of_scope=a.scope.as_dict() if a.scope is not None else None,
            logprobs=a.logprobs,
        )

    def _unanswerable(
        self, req: ChatRequest, resolved: ResolvedPolicy, a: LocalAttempt, note: str = ""
    ) -> Answer:
        timings = self._timings(req, local_s=a.total_s, scope_s=a.scope_s)
        return unanswerable(req, resolved, a, self.config.site, timings, note)

    def _timings(self, req: ChatRequest, **parts: float) -> dict[str, float]:
        out = {k.removesuffix("_s") + "_ms": round(v * 1000, 2) for k, v in parts.items()}
        out["total_ms"] = round((self.clock() - req.arrival) * 1000, 2)
        return out

    # -- escalation -------------------------------------------------------------------------

    async def _escalate(
        self,
        req: ChatRequest,
        resolved: ResolvedPolicy,
        deadline: float,
        attempt: LocalAttempt | None,
        reason: str,
    ) -> AsyncIterator[Event]:
        pol = resolved.policy
        if not pol.residency.allows_cloud:
            # Unreachable by construction; refuse loudly rather than trust it.
            self.residency_violations += 1
            raise RuntimeError("edge_only request reached the escalation path")
        wire = to_generate_request(req, pol, attempt, reason, self.config)
        failure: EscalationError | None = None
        if self.cloud is None:
            failure = EscalationError("UNAVAILABLE", "this agent has no router configured", True)
        elif not self.link_up():
            failure = EscalationError("UNAVAILABLE", "uplink to the router is down", True)
        else:
            t0 = self.clock()
            self.cloud_calls += 1
            streamed = False
            try:
                async for chunk in self.cloud.generate(wire, deadline - self.clock()):
                    kind = chunk.WhichOneof("kind")
                    if kind == "delta" and (chunk.delta.text or chunk.delta.HasField("logprob")):
                        streamed = True
                        yield Piece(chunk.delta.text, delta_logprob(chunk.delta))
                    elif kind == "final":
                        took = self.clock() - t0
                        self._learn_rtt(took)
                        metrics.ESCALATIONS.labels("ok").inc()
                        metrics.ESCALATION_SECONDS.observe(took)
                        yield self._cloud_answer(req, resolved, attempt, reason, chunk.final, took)
                        return
                failure = EscalationError("UNKNOWN", "the router ended without an answer", True)
            except EscalationError as exc:
                failure = exc
            if streamed:  # part of the cloud answer is out: too late to fall back
                metrics.ESCALATIONS.labels("failed").inc()
                raise UpstreamError("escalation_failed", str(failure))
        metrics.ESCALATIONS.labels("retryable" if failure.retryable else "failed").inc()
        if not failure.retryable:
            raise UpstreamError("escalation_refused", str(failure), grpc_code=failure.code)
        async for ev in self._uplink_down(req, resolved, deadline, attempt, reason, wire, failure):
            yield ev

    def _learn_rtt(self, took: float) -> None:
        self.cloud_rtt_s = 0.8 * self.cloud_rtt_s + 0.2 * took

    def _cloud_answer(
        self,
        req: ChatRequest,
        resolved: ResolvedPolicy,
        attempt: LocalAttempt | None,
        reason: str,
        f: pb.Final,
        took: float,
    ) -> Answer:
        return Answer.from_cloud(
            f,
            answer_id=req.id,
            model=req.model,
            min_confidence=resolved.policy.min_confidence,
            escalation_reason=reason,
            local_tokens=attempt.tokens if attempt else 0,
            local_max_tokens=attempt.max_tokens if attempt else 0,
            timings_ms=self._timings(
                req,
                local_s=attempt.total_s if attempt else 0.0,
                local_ttft_s=attempt.ttft_s if attempt else 0.0,
                escalation_s=took,
            ),
            policy=resolved.explain(),
            gate=gate_dict(attempt.verdict) if attempt else None,
        )

    async def _uplink_down(
        self,
        req: ChatRequest,
        resolved: ResolvedPolicy,
        deadline: float,
        attempt: LocalAttempt | None,
        reason: str,
        wire: pb.GenerateRequest,
        failure: EscalationError,
    ) -> AsyncIterator[Event]:
        pol = resolved.policy
        action = pol.on_uplink_down.value
        if action == "queue":
            ttl = self.config.spool.ttl_s
            try:
                self.spool.put(req.id, req.tenant, wire.SerializeToString(), ttl,
                               {"model": req.model, "reason": reason, "webhook": req.webhook,
                                "local_tokens": attempt.tokens if attempt else 0,
                                "local_max_tokens": attempt.max_tokens if attempt else 0,
                                "gate": gate_dict(attempt.verdict) if attempt else None,
                                "policy": resolved.explain()})  # fmt: skip
            except SpoolFull as exc:
                metrics.SPOOL_REFUSED.inc()
                raise StorageFull("spool_full", str(exc)) from None
            self.spool_wakeup.set()
            yield Queued(req.id, time.time() + ttl, f"{reason}; {failure.details}")
            return
        if action == "answer_local" and attempt is not None and attempt.out_of_scope:
            # Nothing to answer locally: the edge model already judged the input out of scope.
            yield self._unanswerable(req, resolved, attempt, note=f"{reason}; uplink_down")
            return
        if action == "answer_local" and pol.residency is not Residency.CLOUD_ONLY:
            if attempt is None or not attempt.complete:
                # Cut short or never run: finish one to flag, late beats none.
                late = max(deadline, self.clock() + pol.deadline_ms / 1000.0)
                attempt = await self._local(req, pol, late, self.gate(pol.min_confidence),
                                            lambda _now: False, early=False)  # fmt: skip
            answer = self._local_answer(req, resolved, attempt, flag=reason)
            answer.escalation_reason = f"{reason}; uplink_down"
            yield answer
            return
        raise Unavailable("uplink_down", f"cannot escalate ({reason}): {failure}")
