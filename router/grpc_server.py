"""gRPC front end (``fleetvl.v1.Router``): the generate call for edge agents escalating.

Images go by digest first; when the router lacks one it sends a single ``NeedImages`` chunk
and ends the stream, and the client repeats the call with those bytes. The caller's gRPC
deadline is the request's remaining budget: admission compares it with the predicted time and
refuses at once (``DEADLINE_EXCEEDED`` when no backend is fast enough,
``RESOURCE_EXHAUSTED`` when they are busy, with ``retry-after-ms`` in trailing metadata).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from fleetvl.errors import FleetVLError, InputError
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from fleetvl.protocol.convert import logprob_message
from fleetvl.protocol.grpc_status import grpc_status
from fleetvl.protocol.stored_images import ImageStore, chat_from_pb
from router import metrics
from router.agents import agent_backends, serve_agent_stream
from router.backends import Delta, Final
from router.idempotency import IdempotencyRecord, RedisFinals
from router.service import RouterService
from router.tickets import Expired, Rejected, Ticket, log_line
from router.wire import wire_scope

__all__ = ["RouterServicer", "add_router_servicer"]

class RouterServicer(pb_grpc.RouterServicer):
    def __init__(self, service: RouterService, blobs: ImageStore) -> None:
        self.service = service
        self.blobs = blobs
        self.keys = service.config.keys()
        url = service.config.redis_url
        self.idempotency = IdempotencyRecord(store=RedisFinals(url) if url else None)
        self._detached: set[asyncio.Task[None]] = set()

    async def AgentConnect(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.AgentUp], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AgentDown]:
        if self._tenant(context, "") is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        async for msg in serve_agent_stream(
            request_iterator, context, agent_backends(self.service.backends.values())
        ):
            yield msg

    def _tenant(self, context: grpc.aio.ServicerContext, asked: str) -> str | None:
        if not self.keys:
            return asked or self.service.config.default_tenant
        md = dict(context.invocation_metadata() or ())
        auth = str(md.get("authorization", ""))
        return self.keys.get(auth.removeprefix("Bearer ").strip())

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        tenant = self._tenant(context, request.tenant)
        if tenant is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        rid = request.request_id or f"grpc-{uuid.uuid4().hex[:20]}"
        fields: dict[str, object] = {"id": rid, "api": "grpc", "tenant": tenant,
                                  "site": request.site, "model": request.model}  # fmt: skip
        key = request.idempotency_key
        if not key:
            try:
                async for chunk in self._generate(request, context, rid, str(tenant), fields):
                    yield chunk
            except _Abort as exc:
                await context.abort(exc.code, exc.message)
            return
        run, slot = await self.idempotency.claim(str(tenant), key)
        if not run:
            assert slot.final is not None  # claim() returns a recorded answer
            metrics.IDEMPOTENT_REPLAYS.inc()
            log_line(**fields, status="OK", outcome="replayed", idempotency_key=key)
            final = pb.Final()
            final.CopyFrom(slot.final)
            final.replayed = True
            yield pb.GenerateChunk(final=final)
            return
        # The run is detached from this call: a caller that goes away mid-answer (an agent
        # killed while delivering its spool) does not cancel it, so the answer is recorded and
        # its replay is served from the record instead of running the request again.
        chunks: asyncio.Queue[pb.GenerateChunk | _Abort | None] = asyncio.Queue()

        async def produce() -> None:
            final = None
            try:
                async for chunk in self._generate(request, context, rid, str(tenant), fields):
                    if chunk.WhichOneof("kind") == "final":
                        final = chunk.final
                    chunks.put_nowait(chunk)
            except _Abort as exc:
                chunks.put_nowait(exc)
            finally:
                self.idempotency.finish(str(tenant), key, slot, final)
                chunks.put_nowait(None)

        task = asyncio.create_task(produce())
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        while (item := await chunks.get()) is not None:
            if isinstance(item, _Abort):
                await context.abort(item.code, item.message)
            yield item

    async def _generate(
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext,
        rid: str,
        tenant: str,
        fields: dict[str, object],
    ) -> AsyncIterator[pb.GenerateChunk]:
        t0 = time.monotonic()
        try:
            req, missing, inline = await chat_from_pb(
                request, self.service.config.limits, self.blobs, id=rid, tenant=tenant,
                deadline_s=context.time_remaining(),
            )  # fmt: skip
            # An image the shared store already held costs the uplink nothing.
            metrics.IMAGE_BYTES_IN.labels("grpc").inc(inline)
        except InputError as exc:
            code = grpc_status(exc) or grpc.StatusCode.INVALID_ARGUMENT
            log_line(**fields, status=code.name, outcome="invalid", error=str(exc))
            raise _Abort(code, str(exc)) from None
        if missing:
            log_line(**fields, status="OK", outcome="need_images", missing=len(missing))
            yield pb.GenerateChunk(need_images=pb.NeedImages(digests=missing))
            return
        code, message, outcome, final = grpc.StatusCode.OK, "", "ok", None
        try:
            ticket = await self.service.admit(req)
            async with contextlib.aclosing(self.service.run(ticket)) as events:
                async for ev in events:
                    if isinstance(ev, Delta):
                        yield pb.GenerateChunk(delta=pb.Delta(
                            text=ev.text, index=ev.index, token_prob=ev.token_prob,
                            logprob=logprob_message(ev.logprob)))  # fmt: skip
                    else:
                        final = ev
                        yield pb.GenerateChunk(final=_final(ticket, ev))
        except FleetVLError as exc:
            code, message = grpc_status(exc) or grpc.StatusCode.INTERNAL, str(exc)
            outcome = ("rejected" if isinstance(exc, Rejected) else
                       "expired" if isinstance(exc, Expired) else
                       "invalid" if isinstance(exc, InputError) else "error")  # fmt: skip
            if isinstance(exc, Rejected) and exc.retry_after_s is not None:
                context.set_trailing_metadata(
                    (("retry-after-ms", str(int(exc.retry_after_s * 1000))),)
                )
        log_line(
            **fields, status=code.name, outcome=outcome,
            total_ms=round((time.monotonic() - t0) * 1000, 2),
            completion_tokens=final.completion_tokens if final else None,
            verdict=final.verdict if final else None, error=message or None,
        )  # fmt: skip
        if code is not grpc.StatusCode.OK:
            raise _Abort(code, message)


class _Abort(Exception):  # noqa: N818 - a control-flow signal, not an error type
    """End the call with this status (raised where the context may not be the caller's)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _final(t: Ticket, f: Final) -> pb.Final:
    """The backend's answer on the wire, verdict and scope score as they came."""
    o = t.outcome
    return pb.Final(
        text=f.text,
        finish_reason=f.finish_reason,
        served_by=f.served_by or (o.kind or "cloud"),
        backend=o.backend or "",
        confidence=f.confidence if f.confidence is not None else float("nan"),
        confidence_signal=f.confidence_signal,
        escalation_reason=t.req.edge_attempt.reason if t.req.edge_attempt else "",
        usage=pb.Usage(prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens,
                       cached_images=f.cached_images),  # fmt: skip
        timings=pb.Timings(
            queue_ms=o.queue_s * 1000,
            ttft_ms=(o.ttft_s or 0) * 1000,
            total_ms=(time.monotonic() - t.started) * 1000,
        ),
        verdict=f.verdict,
        scope=wire_scope(f),
    )


def add_router_servicer(
    server: grpc.aio.Server, service: RouterService, blobs: ImageStore
) -> None:
    pb_grpc.add_RouterServicer_to_server(RouterServicer(service, blobs), server)
