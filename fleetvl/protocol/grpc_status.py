"""The one table from the typed errors of :mod:`fleetvl.errors` to gRPC status codes, for
every gRPC front (the router, the cloud worker, a site agent answering a router's call)."""

from __future__ import annotations

import grpc

from fleetvl.errors import (
    DeadlineExceeded,
    InputError,
    ModelNotFound,
    NotCached,
    ServiceError,
    StorageFull,
    Unavailable,
    UpstreamError,
)

__all__ = ["caller_detail", "grpc_status", "public_detail"]

# A refusal's reason, where a more precise code than UNAVAILABLE tells the caller what to do:
# nothing is fast enough for its deadline, or everything is busy (retry after a while).
_REASONS = {
    "deadline_unmeetable": grpc.StatusCode.DEADLINE_EXCEEDED,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "queue_full": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def grpc_status(exc: BaseException) -> grpc.StatusCode | None:
    """The status for a typed error; None for anything else (a bug: INTERNAL, logged)."""
    if isinstance(exc, ModelNotFound | NotCached):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, Unavailable):
        return _REASONS.get(exc.reason, grpc.StatusCode.UNAVAILABLE)
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, StorageFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, UpstreamError | ServiceError):
        return grpc.StatusCode.UNAVAILABLE
    return None


# Codes whose details describe the caller's request (safe, and useful, to pass on). Any other
# failure's details may name a peer's internals (a Ray actor id, a pid, an address, a
# traceback): they are logged where they happen and never put in a response body.
_CALLER_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def caller_detail(code: grpc.StatusCode, details: str | None) -> str | None:
    """A failed call's details when they describe the caller's request, else None."""
    return details[:300] if code in _CALLER_CODES and details else None


def public_detail(code: grpc.StatusCode, details: str | None) -> str:
    """What of a failed call's status may be shown to the caller of the call that made it."""
    shown = caller_detail(code, details)
    return f"{code.name}: {shown}" if shown else code.name
