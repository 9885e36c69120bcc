"""Backend requests and events to and from ``fleetvl.v1`` messages, for the router's remote
backends (a gRPC server, a site agent's connection)."""

from __future__ import annotations

import math
import time

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import delta_logprob, scope_message
from fleetvl.vlm.scope import ScopeScore
from router.backends import BackendRequest, Delta, Event, Final

__all__ = ["event_from_chunk", "scope_score", "to_generate_request", "wire_scope"]


def to_generate_request(
    req: BackendRequest, with_bytes: set[str] | None = None
) -> pb.GenerateRequest:
    """``req`` as a ``GenerateRequest`` under its resolved policy (the remote end must not
    loosen it); images carry their bytes when their digest is in ``with_bytes`` (``None``:
    all of them), else the digest alone. The time left to its deadline travels as its budget."""
    budget = req.deadline - time.monotonic() if req.deadline else None
    return req.chat.to_pb(req.policy, with_bytes=with_bytes, budget_s=budget)


def event_from_chunk(chunk: pb.GenerateChunk) -> Event | None:
    """The ``Delta`` or ``Final`` a chunk carries; ``None`` for other kinds."""
    kind = chunk.WhichOneof("kind")
    if kind == "delta":
        d = chunk.delta
        prob = d.token_prob if d.HasField("token_prob") else None
        return Delta(d.text, d.index, prob, delta_logprob(d))
    if kind == "final":
        f = chunk.final
        return Final(
            text=f.text,
            finish_reason=f.finish_reason,
            confidence=None if math.isnan(f.confidence) else f.confidence,
            confidence_signal=f.confidence_signal,
            prompt_tokens=f.usage.prompt_tokens,
            completion_tokens=f.usage.completion_tokens,
            cached_images=f.usage.cached_images,
            ttft_s=f.timings.ttft_ms / 1000,
            # Empty: the router fills in the backend's kind (edge or cloud).
            served_by=f.served_by,
            verdict=f.verdict or "answer",  # a backend older than the verdict answers
            scope=scope_score(f.scope) if f.HasField("scope") else None,
        )
    return None


def scope_score(msg: pb.OutOfScope) -> ScopeScore:
    """A wire scope verdict as the core type (its per-part ratios do not travel)."""
    return ScopeScore(score=msg.score, threshold=msg.threshold, scene=msg.scene, part=msg.part)


def wire_scope(f: Final) -> pb.OutOfScope | None:
    """``f.scope`` on the wire (None when the serving model did not score the input)."""
    return scope_message(f.scope) if f.scope is not None else None
