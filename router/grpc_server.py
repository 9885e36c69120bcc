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
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from fleetvl.errors import InputError
from fleetvl.policy import PolicyError, PolicyOverride
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from fleetvl.protocol.image_urls import check_image
from router import metrics
from router.agents import agent_backends, serve_agent_stream
from router.backends import BackendError, Delta, Final, ImageInput
from router.idempotency import IdempotencyRecord, RedisFinals
from router.service import Expired, ModelNotFound, Rejected, RoutedRequest, RouterService, log_line
from router.wire import wire_scope

__all__ = ["RouterServicer", "add_router_servicer"]

_REJECT_CODES = {
    "deadline_unmeetable": grpc.StatusCode.DEADLINE_EXCEEDED,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "queue_full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "no_eligible_backend": grpc.StatusCode.UNAVAILABLE,
}


class RouterServicer(pb_grpc.RouterServicer):
    def __init__(self, service: RouterService, blobs: Any) -> None:
        self.service = service
        self.blobs = blobs
        self.keys = service.config.keys()
        self.agents = agent_backends(list(service.backends.values()))
        url = service.config.redis_url
        self.idempotency = IdempotencyRecord(store=RedisFinals(url) if url else None)
        self._detached: set[asyncio.Task[None]] = set()

    async def AgentConnect(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.AgentUp], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AgentDown]:
        if self._tenant(context, "") is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        async for msg in serve_agent_stream(request_iterator, context, self.agents):
            yield msg

    def _tenant(self, context: grpc.aio.ServicerContext, asked: str) -> str | None:
        if not self.keys:
            return asked or self.service.config.default_tenant
        md = dict(context.invocation_metadata() or ())
        auth = str(md.get("authorization", ""))
        return self.keys.get(auth.removeprefix("Bearer ").strip())

    async def HasImages(  # noqa: N802 - gRPC method name
        self, request: pb.HasImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.HasImagesResponse:
        if self._tenant(context, request.tenant) is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        present = self.blobs.has(list(request.digests)) or [False] * len(request.digests)
        return pb.HasImagesResponse(present=present)

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        tenant = self._tenant(context, request.tenant)
        if tenant is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        rid = request.request_id or f"grpc-{uuid.uuid4().hex[:20]}"
        fields: dict[str, Any] = {"id": rid, "api": "grpc", "tenant": tenant,
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
        fields: dict[str, Any],
    ) -> AsyncIterator[pb.GenerateChunk]:
        t0 = time.monotonic()
        try:
            req, missing = self._routed(request, rid, tenant, context)
        except (InputError, ValueError) as exc:
            log_line(**fields, status="INVALID_ARGUMENT", outcome="invalid", error=str(exc))
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if missing:
            log_line(**fields, status="OK", outcome="need_images", missing=len(missing))
            yield pb.GenerateChunk(need_images=pb.NeedImages(digests=missing))
            return
        code, message, outcome, final = grpc.StatusCode.OK, "", "ok", None
        try:
            ticket = self.service.submit(req)
            async with contextlib.aclosing(self.service.run(ticket)) as events:
                async for ev in events:
                    if isinstance(ev, Delta):
                        yield pb.GenerateChunk(
                            delta=pb.Delta(text=ev.text, index=ev.index, token_prob=ev.token_prob)
                        )
                    else:
                        final = ev
                        yield pb.GenerateChunk(final=_final(ticket, ev))
        except Rejected as exc:
            code, message, outcome = _REJECT_CODES.get(exc.reason, grpc.StatusCode.UNAVAILABLE), \
                str(exc), "rejected"  # fmt: skip
            if exc.retry_after_s is not None:
                context.set_trailing_metadata(
                    (("retry-after-ms", str(int(exc.retry_after_s * 1000))),)
                )
        except Expired as exc:
            code, message, outcome = grpc.StatusCode.DEADLINE_EXCEEDED, str(exc), "expired"
        except PolicyError as exc:
            code, message, outcome = grpc.StatusCode.INVALID_ARGUMENT, str(exc), "invalid"
        except ModelNotFound as exc:
            code, message, outcome = grpc.StatusCode.NOT_FOUND, str(exc), "invalid"
        except InputError as exc:
            code, message, outcome = grpc.StatusCode.INVALID_ARGUMENT, str(exc), "invalid"
        except BackendError as exc:
            code, message, outcome = grpc.StatusCode.UNAVAILABLE, str(exc), "error"
        log_line(
            **fields, status=code.name, outcome=outcome,
            total_ms=round((time.monotonic() - t0) * 1000, 2),
            completion_tokens=final.completion_tokens if final else None,
            verdict=final.verdict if final else None, error=message or None,
        )  # fmt: skip
        if code is not grpc.StatusCode.OK:
            raise _Abort(code, message)

    def _routed(
        self,
        request: pb.GenerateRequest,
        rid: str,
        tenant: str,
        context: grpc.aio.ServicerContext,
    ) -> tuple[RoutedRequest, list[str]]:
        limits = self.service.config.limits
        images: list[ImageInput] = []
        missing: list[str] = []
        image_tokens = text_chars = 0
        messages = []
        if not request.messages:
            raise InputError("messages must not be empty")
        for m in request.messages:
            if m.role not in ("system", "user", "assistant"):
                raise InputError(f"message role {m.role!r} is not system, user or assistant")
            parts: list[dict[str, Any]] = []
            for p in m.content:
                if p.WhichOneof("part") == "text":
                    parts.append({"type": "text", "text": p.text})
                    text_chars += len(p.text)
                    continue
                img = p.image
                data = img.data or None
                if data is not None:
                    digest = hashlib.sha256(data).hexdigest()
                    if img.digest and img.digest != digest:
                        raise InputError(
                            f"image digest {img.digest[:12]}... does not match its bytes"
                        )
                    self.blobs.put(data)
                else:
                    data = self.blobs.get(img.digest)
                    if data is None:
                        missing.append(img.digest)
                        continue
                if len(images) >= limits.max_images:
                    raise InputError(f"at most {limits.max_images} images per request")
                _, tokens = check_image(data, limits.max_image_bytes, limits.max_input_pixels)
                images.append(ImageInput(hashlib.sha256(data).hexdigest(), data))
                image_tokens += tokens
                parts.append({"type": "image"})
            messages.append({"role": m.role, "content": parts})
        s = request.sampling
        sla_fields = {f.name: v for f, v in request.sla.ListFields()} if request.HasField(
            "sla") else {}  # fmt: skip
        try:
            sla = PolicyOverride.model_validate(sla_fields) if sla_fields else None
        except ValueError as exc:
            raise InputError(f"invalid sla: {exc}") from None
        remaining = context.time_remaining()
        attempt = None
        if request.HasField("edge_attempt"):
            e = request.edge_attempt
            attempt = {"text": e.text, "confidence": e.confidence, "signal": e.signal,
                       "reason": e.reason}  # fmt: skip
        req = RoutedRequest(
            id=rid,
            tenant=tenant,
            site=request.site or None,
            model=request.model,
            messages=messages,
            images=images,
            image_tokens=image_tokens,
            prompt_tokens_estimate=text_chars // 4 + 8 * len(messages) + image_tokens,
            max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
            temperature=s.temperature if s.HasField("temperature") else 0.0,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            top_k=s.top_k if s.HasField("top_k") else 0,
            seed=s.seed if s.HasField("seed") else None,
            stop=list(s.stop),
            sla=sla,
            edge_attempt=attempt,
            deadline_s=remaining,
            source=request.source or None,
        )
        return req, missing


class _Abort(Exception):  # noqa: N818 - a control-flow signal, not an error type
    """End the call with this status (raised where the context may not be the caller's)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _final(t: Any, f: Final) -> pb.Final:
    """The backend's answer on the wire, verdict and scope score as they came."""
    o = t.outcome
    return pb.Final(
        text=f.text,
        finish_reason=f.finish_reason,
        served_by=f.served_by or (o.kind or "cloud"),
        backend=o.backend or "",
        confidence=f.confidence if f.confidence is not None else float("nan"),
        confidence_signal=f.confidence_signal,
        escalation_reason=(t.req.edge_attempt or {}).get("reason") or "",
        usage=pb.Usage(prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens),
        timings=pb.Timings(
            queue_ms=o.queue_s * 1000,
            ttft_ms=(o.ttft_s or 0) * 1000,
            total_ms=(time.monotonic() - t.started) * 1000,
        ),
        verdict=f.verdict,
        scope=wire_scope(f),
    )


def add_router_servicer(server: grpc.aio.Server, service: RouterService, blobs: Any) -> None:
    pb_grpc.add_RouterServicer_to_server(RouterServicer(service, blobs), server)
