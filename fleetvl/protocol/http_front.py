"""What the site agent's and the router's OpenAI-compatible HTTP APIs share.

One error envelope and one table from the typed errors of :mod:`fleetvl.errors` to HTTP
statuses, the handler for bodies that do not validate, the body-size limit, and the framing
of streamed chat-completion chunks (server-sent events). Both apps install these, so a
client gets the same status and the same body for the same mistake at every tier.

The envelope is OpenAI's, ``{"error": {"message", "type", "param", "code"}}``, plus FleetVL's
fields where they help a caller act: ``details`` (each invalid field and why), ``reason`` and
``retry_after_s`` (with a ``Retry-After`` header) for refusals. ``type`` is
``invalid_request_error`` for the caller's mistakes and the refusal's reason otherwise
(``uplink_down``, ``spool_full``, ``overloaded``, ...); ``code`` is OpenAI's machine-readable
code where one exists (``context_length_exceeded``, ``model_not_found``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fleetvl.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    InputError,
    InvalidFields,
    ModelNotFound,
    NotCached,
    ServiceError,
    StorageFull,
    TooManyImages,
    Unavailable,
    Unsupported,
    UnsupportedImageFormat,
    UpstreamError,
)
from fleetvl.policy import PolicyError, error_details
from fleetvl.protocol.image_urls import PayloadTooLarge

__all__ = [
    "SSE_DONE",
    "BodyLimit",
    "error_json",
    "error_response",
    "install_error_handlers",
    "sse",
]

# ASGI's callables (Starlette's own aliases, spelled out to keep this module's imports small).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_RETRY_S = 1.0  # Retry-After of a 503 whose cause gives no better estimate

# (error class, HTTP status, OpenAI code): the first class the error is an instance of wins, so
# subclasses come before the classes they extend.
_INPUT: list[tuple[type[InputError], int, str | None]] = [
    (ModelNotFound, 404, "model_not_found"),
    (ContextLengthExceeded, 400, "context_length_exceeded"),
    (TooManyImages, 400, "too_many_images"),
    (Unsupported, 400, "unsupported_parameter"),
    (PolicyError, 422, None),
    (InvalidFields, 422, None),
    (PayloadTooLarge, 413, "payload_too_large"),
    (UnsupportedImageFormat, 415, "unsupported_media_type"),
    (InputError, 400, None),
]
_SERVICE: list[tuple[type[ServiceError], int]] = [
    (Unavailable, 503),
    (DeadlineExceeded, 504),
    (UpstreamError, 502),
    (StorageFull, 507),
    (NotCached, 404),
]


def error_json(
    status: int,
    type_: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    retry_after_s: float | None = None,
    extra: Mapping[str, object] | None = None,
) -> JSONResponse:
    """The error envelope with ``status`` (and ``Retry-After`` when a retry time is known);
    ``extra``: FleetVL's fields beside OpenAI's (``details``, ``reason``, ...)."""
    headers = {}
    body: dict[str, object] = {"message": message, "type": type_, "param": param, "code": code}
    if retry_after_s is not None and math.isfinite(retry_after_s):
        headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
        body["retry_after_s"] = round(retry_after_s, 3)
    return JSONResponse({"error": {**body, **(extra or {})}}, status_code=status, headers=headers)


def error_response(exc: BaseException) -> JSONResponse | None:
    """The response for a typed error; None for anything else (a bug: 500 and a log line)."""
    if isinstance(exc, InputError):
        status, code = next((s, c) for cls, s, c in _INPUT if isinstance(exc, cls))
        extra: dict[str, object] = {}
        if isinstance(exc, PolicyError):
            extra["details"] = error_details(exc, "sla.")
        elif isinstance(exc, InvalidFields):
            extra["details"] = exc.details
        param = exc.param if isinstance(exc, Unsupported) else None
        return error_json(status, "invalid_request_error", str(exc), code=code, param=param,
                          extra=extra)  # fmt: skip
    if isinstance(exc, ServiceError):
        status = next((s for cls, s in _SERVICE if isinstance(exc, cls)), 503)
        retry = exc.retry_after_s
        if retry is None and status == 503:
            retry = DEFAULT_RETRY_S  # a 503 always says when trying again can help
        return error_json(status, exc.reason, str(exc), retry_after_s=retry,
                          extra={"reason": exc.reason, **exc.extra})  # fmt: skip
    return None


def install_error_handlers(app: FastAPI, log: logging.Logger) -> None:
    """Invalid bodies get 422 with each field's reason; typed errors their status; anything
    else 500 without a stack trace (logged)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
             "reason": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]  # fmt: skip
        return error_json(422, "invalid_request_error", "request body is invalid",
                          extra={"details": details})  # fmt: skip

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if (resp := error_response(exc)) is not None:
            return resp
        log.error("unhandled error", exc_info=exc)
        return error_json(500, "internal_error", "internal error; see the service log")


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes, declared or streamed (413), before
    the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large()(scope, receive, send)
        seen = 0

        async def limited() -> Message:
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
            return await self._too_large()(scope, receive, send)

    def _too_large(self) -> JSONResponse:
        return error_json(413, "invalid_request_error",
                          f"body is over the {self.limit}-byte limit",
                          code="payload_too_large")  # fmt: skip


class _TooLarge(Exception):
    pass


def sse(obj: Mapping[str, object]) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
