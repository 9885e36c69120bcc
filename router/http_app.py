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
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleetvl.protocol.http_front import (
    SSE_DONE,
    BodyLimit,
    error_json,
    error_response,
    install_error_handlers,
    sse,
)
from fleetvl.protocol.openai_api import (
    ChatCompletionRequest,
    logprobs_json,
    request_sla,
)
from fleetvl.protocol.request import ChatRequest
from fleetvl.vlm.confidence import TokenLogprob
from router import metrics
from router.answers import (
    closing_deltas,
    completion_body,
    fleetvl_section,
    openai_finish,
    served_by,
    usage,
)
from router.backends import BackendError, Delta, Final
from router.service import RouterService
from router.tickets import Expired, Rejected, Ticket, log_line

__all__ = ["create_app"]

log = logging.getLogger("fleetvl.router")


class _Unauthorized(Exception):
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

    install_error_handlers(app, log)

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(_: Request, exc: _Unauthorized) -> JSONResponse:
        return error_json(401, "authentication_error", "missing or unknown API key")

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
            raise _Unauthorized
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
    async def models(request: Request) -> dict[str, object]:
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
        fields: dict[str, object] = {"id": rid, "api": "http", "tenant": tenant,
                                     "model": body.model}  # fmt: skip
        try:
            req = ChatRequest.from_openai(
                body, cfg.limits, service.served_models(), id=rid, tenant=tenant,
                sla=request_sla(body.sla, request.headers),
                site=body.site or request.headers.get("x-fleetvl-site"),
            )  # fmt: skip
            fields["site"] = req.site
            metrics.IMAGE_BYTES_IN.labels("http").inc(sum(len(i.data) for i in req.images))
            ticket = await service.admit(req)
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
            final, text, logprobs = await _collect(service, ticket, request)
        except Exception as exc:
            resp = _map_error(exc)
            _finish_log(fields, t0, resp.status_code, _outcome_of(exc), exc, ticket)
            resp.headers["server-timing"] = _server_timing(t0)
            return resp
        out = completion_body(rid, body.model, ticket, final, text, logprobs_json(logprobs))
        _finish_log(fields, t0, 200, "ok", None, ticket, final)
        return JSONResponse(
            out,
            headers={
                "x-request-id": rid,
                "x-fleetvl-served-by": served_by(ticket, final),
                "server-timing": _server_timing(t0),
            },
        )

    return app


def _server_timing(t0: float) -> str:
    return f"total;dur={(time.monotonic() - t0) * 1000:.1f}"


async def _collect(
    service: RouterService, t: Ticket, request: Request
) -> tuple[Final, str, list[TokenLogprob] | None]:
    """Run to the end; the client going away cancels the work (queued or running)."""

    async def consume() -> tuple[Final, str, list[TokenLogprob] | None]:
        text: list[str] = []
        logprobs: list[TokenLogprob] = []
        final: Final | None = None
        async with contextlib.aclosing(service.run(t)) as events:
            async for ev in events:
                if isinstance(ev, Delta):
                    text.append(ev.text)
                    if ev.logprob is not None:
                        logprobs.append(ev.logprob)
                else:
                    final = ev
        if final is None:
            raise BackendError("backend ended without a final answer")
        asked = t.req.params.logprobs is not None
        return final, final.text or "".join(text), logprobs if asked else None

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
    fields: dict[str, object],
    t0: float,
) -> AsyncIterator[bytes]:
    rid = fields["id"]
    created = int(time.time())

    def chunk(delta: dict[str, object], finish: str | None = None,
              logprobs: dict[str, object] | None = None, **extra: object) -> bytes:  # fmt: skip
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        return sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": body.model, "choices": [choice], **extra})  # fmt: skip

    final: Final | None = None
    status, outcome, err = 200, "ok", None
    try:
        yield chunk({"role": "assistant", "content": ""})
        async with contextlib.aclosing(service.run(t)) as events:
            async for ev in events:
                if isinstance(ev, Delta):
                    if ev.text or ev.logprob is not None:
                        lp = logprobs_json([ev.logprob]) if ev.logprob is not None else None
                        yield chunk({"content": ev.text}, logprobs=lp)
                else:
                    final = ev
        if final is None:
            raise BackendError("backend ended without a final answer")
        for delta in closing_deltas(final):
            yield chunk(delta)
        section = fleetvl_section(t, final, served_by(t, final))
        yield chunk({}, openai_finish(final), fleetvl=section)
        if body.stream_options and body.stream_options.include_usage:
            yield sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                       "model": body.model, "choices": [], "usage": usage(final)})  # fmt: skip
    except asyncio.CancelledError:
        status, outcome = 499, "cancelled"
        raise
    except Exception as exc:
        resp = _map_error(exc)
        status, outcome, err = resp.status_code, _outcome_of(exc), exc
        yield b"data: " + bytes(resp.body) + b"\n\n"
    finally:
        _finish_log(fields, t0, status, outcome, err, t, final)
    yield SSE_DONE


def _map_error(exc: BaseException) -> JSONResponse:
    if isinstance(exc, _ClientGone):
        return error_json(499, "client_closed_request", "client went away")
    if (resp := error_response(exc)) is not None:
        return resp
    log.exception("unexpected error", exc_info=exc)
    return error_json(500, "internal_error", "internal error; see the router log")


def _outcome_of(exc: BaseException) -> str:
    return {
        Rejected: "rejected", Expired: "deadline_exceeded", _ClientGone: "cancelled",
        BackendError: "error",
    }.get(type(exc), "invalid")  # fmt: skip


def _finish_log(
    fields: dict[str, object],
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
    extra: dict[str, object] = {"status": status, "outcome": outcome, "served_by": served,
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
