"""OpenAI-compatible HTTP API of the router (FastAPI).

``POST /v1/chat/completions`` (JSON or SSE streaming), ``GET /v1/models``, ``/healthz``,
``/readyz``, ``/metrics``. Every answer carries a ``fleetvl`` object: its verdict (an answer,
or unanswerable in OpenAI's refusal shape: see :mod:`router.answers`), who served it (edge,
cloud, cache), its confidence and the signal, why it was escalated, its timings and the
policy that applied. Errors are OpenAI-shaped ``{"error": {...}}`` bodies with a reason:
400 bad input, 401 bad key, 404 unknown model, 413 too large, 415 image format, 422 invalid
field (with ``details: [{field, reason}]``), 503 refused at admission (``Retry-After``),
504 deadline passed after admission, 502 backend failure. Never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleetvl.errors import FleetVLError
from fleetvl.policy import PolicyOverride
from fleetvl.protocol.image_urls import check_image, parse_data_url
from fleetvl.protocol.openai_api import (
    ChatCompletionRequest,
    ImageUrlPart,
    SlaHeaderError,
    client_error,
    request_sla,
)
from router import metrics
from router.answers import (
    closing_deltas,
    completion_body,
    fleetvl_section,
    openai_finish,
    served_by,
    usage,
)
from router.backends import BackendError, Delta, Final, ImageInput
from router.service import (
    Expired,
    ModelNotFound,
    Rejected,
    RoutedRequest,
    RouterService,
    Ticket,
    log_line,
)

__all__ = ["create_app"]

log = logging.getLogger("fleetvl.router")


class HttpError(Exception):
    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.extra = extra


def _error(status: int, type_: str, message: str, headers: dict | None = None, **extra: Any):
    body = {"error": {"type": type_, "message": message, "code": status, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes, declared or streamed (413)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            resp = _error(413, "payload_too_large", f"body is over the {self.limit}-byte limit")
            return await resp(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            resp = _error(413, "payload_too_large", f"body is over the {self.limit}-byte limit")
            return await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(service: RouterService) -> FastAPI:
    cfg = service.config
    keys = cfg.keys()
    app = FastAPI(
        title="FleetVL router",
        version="1",
        description="OpenAI-compatible chat completions with per-request SLA policies.",
    )
    app.add_middleware(BodyLimit, limit=cfg.limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            details.append(
                {"field": ".".join(loc) or "body", "reason": str(e.get("msg", "invalid"))}
            )
        return _error(422, "invalid_request_error", "request body is invalid", details=details)

    @app.exception_handler(HttpError)
    async def _http_error(_: Request, exc: HttpError) -> JSONResponse:
        return _error(exc.status, exc.type, str(exc), **exc.extra)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, "internal_error", "internal error; see the router log")

    @app.on_event("startup")
    async def _start() -> None:
        await service.start()

    @app.on_event("shutdown")
    async def _stop() -> None:
        await service.stop()

    def tenant_of(request: Request) -> str:
        if not keys:
            return request.headers.get("x-fleetvl-tenant") or cfg.default_tenant
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        tenant = keys.get(key)
        if tenant is None:
            raise HttpError(401, "authentication_error", "missing or unknown API key")
        return tenant

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if service.ready:
            return JSONResponse({"status": "ready", "backends": sorted(service.backends)})
        return JSONResponse({"status": "no cloud backend"}, status_code=503)

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        tenant_of(request)
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fleetvl"}
                for m in service.models()
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        t0 = time.monotonic()
        rid = request.headers.get("x-request-id") or f"chatcmpl-{uuid.uuid4().hex[:24]}"
        tenant = tenant_of(request)
        fields: dict[str, Any] = {"id": rid, "api": "http", "tenant": tenant, "model": body.model}
        try:
            req = _routed(body, request, rid, tenant, cfg.limits)
            fields["site"] = req.site
            ticket = service.submit(req)
        except Exception as exc:
            resp = _map_error(exc)
            _finish_log(fields, t0, resp.status_code, _outcome_of(exc), exc)
            resp.headers["server-timing"] = _server_timing(t0)
            return resp
        if body.stream:
            return StreamingResponse(
                _sse(service, ticket, body, fields, t0),
                media_type="text/event-stream",
                headers={"x-request-id": rid, "cache-control": "no-cache"},
            )
        try:
            final, text = await _collect(service, ticket, request)
        except Exception as exc:
            resp = _map_error(exc)
            _finish_log(fields, t0, resp.status_code, _outcome_of(exc), exc, ticket)
            resp.headers["server-timing"] = _server_timing(t0)
            return resp
        out = completion_body(rid, body.model, ticket, final, text)
        _finish_log(fields, t0, 200, "ok", None, ticket, final)
        return JSONResponse(
            out,
            headers={
                "x-request-id": rid,
                "x-fleetvl-served-by": out["fleetvl"]["served_by"],
                "server-timing": _server_timing(t0),
            },
        )

    return app


def _server_timing(t0: float) -> str:
    return f"total;dur={(time.monotonic() - t0) * 1000:.1f}"


def _routed(
    body: ChatCompletionRequest, request: Request, rid: str, tenant: str, limits: Any
) -> RoutedRequest:
    images: list[ImageInput] = []
    image_tokens = 0
    text_chars = 0
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(body.messages):
        parts: list[dict[str, Any]] = []
        if isinstance(m.content, str):
            parts.append({"type": "text", "text": m.content})
            text_chars += len(m.content)
        else:
            for j, p in enumerate(m.content):
                if isinstance(p, ImageUrlPart):
                    if len(images) >= limits.max_images:
                        raise HttpError(
                            422, "invalid_request_error",
                            f"at most {limits.max_images} images per request",
                            details=[{"field": f"messages.{i}.content.{j}",
                                      "reason": "too many images"}],
                        )  # fmt: skip
                    data = parse_data_url(p.image_url.url, limits.max_image_bytes)
                    digest, tokens = check_image(
                        data, limits.max_image_bytes, limits.max_input_pixels
                    )
                    images.append(ImageInput(digest, data))
                    image_tokens += tokens
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": p.text})
                    text_chars += len(p.text)
        messages.append({"role": m.role, "content": parts})
    sla = _sla(body, request)
    return RoutedRequest(
        id=rid,
        tenant=tenant,
        site=body.site or request.headers.get("x-fleetvl-site"),
        model=body.model,
        messages=messages,
        images=images,
        image_tokens=image_tokens,
        # ~4 characters per token plus the template's per-message overhead: the predictor
        # only needs the scale, and the router has no tokenizer of every model.
        prompt_tokens_estimate=text_chars // 4 + 8 * len(messages) + image_tokens,
        max_tokens=body.requested_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list,
        sla=sla,
        source=body.source,
    )


def _sla(body: ChatCompletionRequest, request: Request) -> PolicyOverride | None:
    try:
        return request_sla(body.sla, request.headers)
    except SlaHeaderError as exc:
        raise HttpError(422, "invalid_request_error", str(exc), details=exc.details) from None


async def _collect(service: RouterService, t: Ticket, request: Request) -> tuple[Final, str]:
    """Run to the end; the client going away cancels the work (queued or running)."""

    async def consume() -> tuple[Final, str]:
        text: list[str] = []
        final: Final | None = None
        async with contextlib.aclosing(service.run(t)) as events:
            async for ev in events:
                if isinstance(ev, Delta):
                    text.append(ev.text)
                else:
                    final = ev
        if final is None:
            raise BackendError("backend ended without a final answer")
        return final, final.text or "".join(text)

    work = asyncio.ensure_future(consume())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        raise _ClientGone
    finally:
        gone.cancel()


class _ClientGone(Exception):
    pass


async def _disconnected(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _sse(
    service: RouterService,
    t: Ticket,
    body: ChatCompletionRequest,
    fields: dict[str, Any],
    t0: float,
) -> AsyncIterator[bytes]:
    rid = fields["id"]
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> bytes:
        obj = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    final: Final | None = None
    status, outcome, err = 200, "ok", None
    try:
        yield chunk({"role": "assistant", "content": ""})
        async with contextlib.aclosing(service.run(t)) as events:
            async for ev in events:
                if isinstance(ev, Delta):
                    if ev.text:
                        yield chunk({"content": ev.text})
                else:
                    final = ev
        if final is None:
            raise BackendError("backend ended without a final answer")
        for delta in closing_deltas(final):
            yield chunk(delta)
        section = fleetvl_section(t, final, served_by(t, final))
        yield chunk({}, openai_finish(final), fleetvl=section)
        if body.stream_options and body.stream_options.include_usage:
            tail = {
                "id": rid, "object": "chat.completion.chunk", "created": created,
                "model": body.model, "choices": [], "usage": usage(final),
            }  # fmt: skip
            yield b"data: " + json.dumps(tail).encode() + b"\n\n"
    except asyncio.CancelledError:
        status, outcome = 499, "cancelled"
        raise
    except Exception as exc:
        resp = _map_error(exc)
        status, outcome, err = resp.status_code, _outcome_of(exc), exc
        yield b"data: " + resp.body + b"\n\n"
    finally:
        _finish_log(fields, t0, status, outcome, err, t, final)
    yield b"data: [DONE]\n\n"


def _map_error(exc: BaseException) -> JSONResponse:
    if isinstance(exc, HttpError):
        return _error(exc.status, exc.type, str(exc), **exc.extra)
    if isinstance(exc, Rejected):
        headers = None
        if exc.retry_after_s is not None:
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s + 0.499)))}
        detail = {k: v for k, v in exc.detail().items() if k != "message"}
        return _error(503, "rejected", str(exc), headers, **detail)
    if isinstance(exc, Expired):
        return _error(504, "deadline_exceeded", str(exc), reason=exc.reason)
    if isinstance(exc, ModelNotFound):
        return _error(404, "model_not_found", str(exc))
    if (known := client_error(exc)) is not None:
        status, type_, extra = known
        return _error(status, type_, str(exc), **extra)
    if isinstance(exc, BackendError | FleetVLError):
        return _error(502, "backend_error", str(exc))
    if isinstance(exc, _ClientGone):
        return _error(499, "client_closed_request", "client went away")
    log.exception("unexpected error", exc_info=exc)
    return _error(500, "internal_error", "internal error; see the router log")


def _outcome_of(exc: BaseException) -> str:
    return {
        Rejected: "rejected", Expired: "deadline_exceeded", _ClientGone: "cancelled",
        BackendError: "error",
    }.get(type(exc), "invalid")  # fmt: skip


def _finish_log(
    fields: dict[str, Any],
    t0: float,
    status: int,
    outcome: str,
    err: BaseException | None,
    t: Ticket | None = None,
    final: Final | None = None,
) -> None:
    elapsed = time.monotonic() - t0
    served = served_by(t, final) if t is not None and final is not None else "none"
    metrics.REQUESTS.labels(fields.get("api", "http"), outcome, served).inc()
    metrics.LATENCY.labels(fields.get("api", "http")).observe(elapsed)
    if t is not None and t.outcome.ttft_s is not None:
        metrics.TTFT.observe(t.outcome.ttft_s)
    extra: dict[str, Any] = {"status": status, "outcome": outcome, "served_by": served,
                             "total_ms": round(elapsed * 1000, 2)}  # fmt: skip
    if t is not None:
        extra.update(
            backend=t.outcome.backend,
            queue_ms=round(t.outcome.queue_s * 1000, 2),
            deadline_ms=t.policy.policy.deadline_ms,
            priority=t.policy.policy.priority.value,
            residency=t.policy.policy.residency.value,
        )
    if final is not None:
        extra.update(
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
            finish_reason=final.finish_reason,
            verdict=final.verdict,
            confidence=final.confidence,
        )
    if err is not None:
        extra["error"] = str(err)[:300]
    log_line(**fields, **extra)
