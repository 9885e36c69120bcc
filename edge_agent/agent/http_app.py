"""The site box's local HTTP API: the router's OpenAI-compatible surface, plus polling.

``POST /v1/chat/completions`` (JSON or SSE; SLA in ``extra_body={"sla": {...}}`` or
``x-fleetvl-*`` headers), ``GET /v1/requests/{id}`` (spooled escalations), ``GET /v1/models``,
``/healthz``, ``/readyz``, ``/metrics``. Status codes: 200 answer, 202 accepted into the spool
(``Location`` to poll), 400/413/415/422 bad input with the reason, 502 the router refused the
escalation, 503 uplink down with ``on_uplink_down: fail`` or local engines full, 507 spool
over quota. Never a stack trace. One JSON log line per request.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.agent import metrics
from edge_agent.agent.answers import Answer, Piece, Queued, completion_body, fleetvl_section
from edge_agent.agent.requests import parse_chat
from edge_agent.agent.service import AgentService
from fleetvl.errors import InputError
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
    refusal_text,
    request_sla,
)
from fleetvl.protocol.request import ChatRequest
from fleetvl.vlm.confidence import TokenLogprob

__all__ = ["create_app"]

log = logging.getLogger("fleetvl.edge.requests")


def _map_error(exc: BaseException) -> JSONResponse:
    if (resp := error_response(exc)) is not None:
        return resp
    log.error("unhandled error", exc_info=exc)
    return error_json(500, "internal_error", "internal error; see the agent log")


def _log(fields: dict[str, object], t0: float, status: int, outcome: str, **more: object) -> None:
    metrics.REQUESTS.labels(outcome).inc()
    metrics.LATENCY.observe(time.monotonic() - t0)
    line = {**fields, "status": status, "outcome": outcome,
            "total_ms": round((time.monotonic() - t0) * 1000, 2), **more}  # fmt: skip
    log.info(json.dumps(line, separators=(",", ":"), default=str))


def _outcome(a: Answer) -> str:
    if a.verdict == "unanswerable":
        return "unanswerable"
    return "low_confidence_local" if a.low_confidence else a.served_by


def create_app(service: AgentService) -> FastAPI:
    cfg = service.config
    app = FastAPI(title=f"FleetVL site agent ({cfg.site})", version="1")

    app.add_middleware(BodyLimit, limit=cfg.limits.max_body_bytes)
    install_error_handlers(app, log)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "site": cfg.site, "bundle": service.pool.digest[:16],
                "uplink": "up" if service.link_up() else "down"}  # fmt: skip

    @app.get("/readyz")
    async def readyz() -> dict[str, object]:
        return {"status": "ready", "engines": service.pool.size}

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [
            {"id": cfg.model, "object": "model", "created": 0, "owned_by": "fleetvl"}]}  # fmt: skip

    @app.get("/v1/requests/{rid}")
    async def poll(rid: str) -> Response:
        st = service.spool.get(rid)
        if st is None:
            return error_json(404, "not_found", f"no spooled request {rid!r} on this agent")
        status = {"done": "completed"}.get(st.state, st.state)
        return JSONResponse({"id": rid, "status": status, "attempts": st.attempts,
                             "expires_at": st.expires, "response": st.result,
                             "error": st.error if st.state != "pending" else None})  # fmt: skip

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        t0 = time.monotonic()
        fields: dict[str, object] = {"site": cfg.site, "model": body.model}
        try:
            webhook = request.headers.get("x-fleetvl-webhook")
            if webhook and not cfg.allow_webhooks:
                raise InputError("x-fleetvl-webhook is disabled on this agent "
                                 "(allow_webhooks: false); poll GET /v1/requests/{id}")  # fmt: skip
            req = parse_chat(body, cfg, request_sla(body.sla, request.headers), webhook)
            fields["id"] = req.id
            events = service.handle(req)
            if body.stream:
                first = await anext(events)  # errors before the first byte get a status
                usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(
                    _sse(req, first, events, fields, t0, usage),
                    media_type="text/event-stream",
                    headers={"x-request-id": req.id, "cache-control": "no-cache"},
                )
            result: Answer | Queued | None = None
            streamed: list[TokenLogprob] = []
            async for ev in events:
                if isinstance(ev, Piece):
                    if ev.logprob is not None:
                        streamed.append(ev.logprob)
                else:
                    result = ev
            if isinstance(result, Answer) and result.logprobs is None and streamed:
                result.logprobs = streamed
        except Exception as exc:
            resp = _map_error(exc)
            _log(fields, t0, resp.status_code, "error" if resp.status_code >= 500 else "invalid",
                 error=str(exc))  # fmt: skip
            service.report((time.monotonic() - t0) * 1000, resp.status_code < 500, "none", False)
            return resp
        answered = _respond(req, result, fields, t0)
        ms = (time.monotonic() - t0) * 1000
        if isinstance(result, Answer):
            deadline = result.policy.get("deadline_ms", {}).get("value", math.inf)
            assert isinstance(deadline, float | int)
            service.report(ms, True, result.served_by, ms <= deadline)
        else:
            service.report(ms, result is not None, "queued", False)
        return answered

    return app


def _respond(
    req: ChatRequest, result: Answer | Queued | None, fields: dict[str, object], t0: float
) -> Response:
    if isinstance(result, Queued):
        _log(fields, t0, 202, "queued", reason=result.reason)
        return JSONResponse(
            {"id": result.id, "object": "fleetvl.queued", "status": "pending",
             "poll": f"/v1/requests/{result.id}", "expires_at": result.expires_at,
             "reason": result.reason},
            status_code=202, headers={"location": f"/v1/requests/{result.id}"},
        )  # fmt: skip
    if result is None:
        _log(fields, t0, 502, "error", error="no answer")
        return error_json(502, "no_answer", "the request ended without an answer")
    _log(fields, t0, 200, _outcome(result), served_by=result.served_by, verdict=result.verdict,
         source=req.source, scope=(result.out_of_scope or {}).get("score"),
         confidence=result.confidence, signal=result.signal, threshold=result.threshold,
         escalation_reason=result.escalation_reason, local_tokens=result.local_tokens)  # fmt: skip
    return JSONResponse(
        completion_body(result),
        headers={"x-request-id": req.id, "x-fleetvl-served-by": result.served_by},
    )


async def _sse(
    req: ChatRequest,
    first: Piece | Answer | Queued,
    events: AsyncIterator[Piece | Answer | Queued],
    fields: dict[str, object],
    t0: float,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, object], finish: str | None = None,
              logprobs: list[TokenLogprob] | None = None, **extra: object) -> bytes:  # fmt: skip
        choice = {"index": 0, "delta": delta, "finish_reason": finish,
                  "logprobs": logprobs_json(logprobs)}  # fmt: skip
        return sse({"id": req.id, "object": "chat.completion.chunk", "created": req.created,
                    "model": req.model, "choices": [choice], **extra})  # fmt: skip

    yield chunk({"role": "assistant"})
    sent = ""
    ev: Piece | Answer | Queued | None = first
    try:
        while ev is not None:
            if isinstance(ev, Piece):
                sent += ev.text
                yield chunk({"content": ev.text}, logprobs=[ev.logprob] if ev.logprob else None)
            elif isinstance(ev, Queued):
                _log(fields, t0, 202, "queued", reason=ev.reason)
                yield chunk({}, "stop", fleetvl={"queued": True, "poll": f"/v1/requests/{ev.id}"})
                break
            else:
                if ev.verdict == "unanswerable":
                    yield chunk({"refusal": refusal_text(ev.out_of_scope or {})})
                elif ev.text.startswith(sent) and len(ev.text) > len(sent):
                    # A local answer comes whole: its text, and its tokens' log-probabilities.
                    yield chunk({"content": ev.text[len(sent) :]},
                                logprobs=ev.logprobs if not sent else None)  # fmt: skip
                finish = ev.finish_reason if ev.finish_reason in ("stop", "length") else "stop"
                yield chunk({}, finish, fleetvl=fleetvl_section(ev))
                if include_usage:
                    yield sse({"id": req.id, "object": "chat.completion.chunk",
                               "created": req.created, "model": req.model, "choices": [],
                               "usage": completion_body(ev)["usage"]})  # fmt: skip
                _log(fields, t0, 200, _outcome(ev), served_by=ev.served_by)
                break
            ev = await anext(events, None)
    except Exception as exc:  # the status line is out: report in-band
        resp = _map_error(exc)
        _log(fields, t0, resp.status_code, "error", error=str(exc))
        yield f"data: {bytes(resp.body).decode()}\n\n".encode()
    yield SSE_DONE
