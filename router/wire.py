"""Backend requests and events to and from ``fleetvl.v1`` messages, for the router's remote
backends (a gRPC server, a site agent's connection)."""

from __future__ import annotations

import math

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import sampling_message, scope_message, sla_message
from fleetvl.vlm.scope import ScopeScore
from router.backends import BackendRequest, Delta, Event, Final

__all__ = ["event_from_chunk", "scope_score", "to_generate_request", "wire_scope"]


def to_generate_request(
    req: BackendRequest, with_bytes: set[str] | None = None
) -> pb.GenerateRequest:
    """``req`` as a ``GenerateRequest``; images carry their bytes when their digest is in
    ``with_bytes`` (``None``: all of them), else the digest alone."""
    images = iter(req.images)
    messages = []
    for m in req.messages:
        parts = []
        for p in m["content"]:
            if p.get("type") == "image":
                img = next(images)
                data = img.data if with_bytes is None or img.digest in with_bytes else b""
                parts.append(pb.ContentPart(image=pb.Image(digest=img.digest, data=data)))
            else:
                parts.append(pb.ContentPart(text=p.get("text", "")))
        messages.append(pb.Message(role=m["role"], content=parts))
    pol = req.policy
    return pb.GenerateRequest(
        request_id=req.id,
        tenant=req.tenant,
        site=req.site or "",
        model=req.model,
        messages=messages,
        sampling=sampling_message(req),
        # The policy is already resolved here; the remote end must not loosen it.
        sla=sla_message(pol),
        source=req.source or "",
    )


def event_from_chunk(chunk: pb.GenerateChunk) -> Event | None:
    """The ``Delta`` or ``Final`` a chunk carries; ``None`` for other kinds."""
    kind = chunk.WhichOneof("kind")
    if kind == "delta":
        d = chunk.delta
        return Delta(d.text, d.index, d.token_prob if d.HasField("token_prob") else None)
    if kind == "final":
        f = chunk.final
        return Final(
            text=f.text,
            finish_reason=f.finish_reason,
            confidence=None if math.isnan(f.confidence) else f.confidence,
            confidence_signal=f.confidence_signal,
            prompt_tokens=f.usage.prompt_tokens,
            completion_tokens=f.usage.completion_tokens,
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
