"""``fleetvl.v1`` request fields to what engines take, shared by every tier that serves
``Generate`` (the cloud worker, a site agent answering over its uplink)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fleetvl.errors import InputError
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.sampling import SamplingParams

if TYPE_CHECKING:
    from fleetvl.policy import SlaPolicy
    from fleetvl.vlm.scope import ScopeScore

__all__ = [
    "chat_inputs",
    "inline_call_inputs",
    "sampling_message",
    "sampling_params",
    "scope_dict",
    "scope_message",
    "sla_message",
]


def sampling_params(s: pb.Sampling, default_max_tokens: int = 256) -> SamplingParams:
    """Unset fields take SamplingParams' defaults (greedy)."""
    return SamplingParams(
        max_tokens=s.max_tokens if s.HasField("max_tokens") else default_max_tokens,
        temperature=s.temperature if s.HasField("temperature") else 0.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=s.top_k if s.HasField("top_k") else 0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
    )


def sampling_message(s: Any) -> pb.Sampling:
    """The inverse of :func:`sampling_params`: ``s`` is anything with SamplingParams' fields
    (SamplingParams itself, the router's backend request); a ``None`` seed stays unset."""
    return pb.Sampling(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        stop=list(s.stop),
    )


def chat_inputs(
    messages: Sequence[pb.Message], image_bytes: Callable[[pb.Image], bytes | None]
) -> tuple[list[dict[str, Any]], list[bytes], list[str]]:
    """Chat-template messages (images as ``{"type": "image"}``), the images' bytes in order,
    and the digests of images whose bytes ``image_bytes`` could not supply.

    Raises:
        InputError: an image's bytes do not match the digest sent with them.
    """
    out: list[dict[str, Any]] = []
    images: list[bytes] = []
    missing: list[str] = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if p.WhichOneof("part") != "image":
                parts.append({"type": "text", "text": p.text})
                continue
            data = image_bytes(p.image)
            if not data:
                missing.append(p.image.digest)
                continue
            if p.image.digest and hashlib.sha256(data).hexdigest() != p.image.digest:
                raise InputError("image digest does not match its bytes")
            images.append(data)
            parts.append({"type": "image"})
        out.append({"role": m.role, "content": parts})
    return out, images, missing


def inline_call_inputs(
    req: pb.GenerateRequest,
) -> tuple[list[dict[str, Any]], list[bytes], SamplingParams]:
    """Messages, image bytes and sampling of a site-bound call: the router sends those with
    their images inline, so an image without bytes is bad input.

    Raises:
        InputError: an image without its bytes, or bytes that do not match their digest.
    """
    messages, images, missing = chat_inputs(req.messages, lambda image: image.data)
    if missing:
        raise InputError(f"call without the bytes of images {missing}")
    return messages, images, sampling_params(req.sampling)


def sla_message(policy: SlaPolicy) -> pb.Sla:
    """A resolved policy as the ``Sla`` of a forwarded request: the fields the next hop may
    tighten but must not loosen (the deadline travels as the gRPC deadline)."""
    return pb.Sla(
        min_confidence=policy.min_confidence,
        residency=policy.residency.value,
        priority=policy.priority.value,
        max_output_tokens=policy.max_output_tokens,
        cache=policy.cache.value,
        on_out_of_scope=policy.on_out_of_scope.value,
    )


def scope_message(score: ScopeScore) -> pb.OutOfScope:
    """A scope verdict on the wire (``Final.scope``, ``EdgeAttempt.scope``)."""
    return pb.OutOfScope(score=score.score, threshold=score.threshold, part=score.part,
                         scene=score.scene)  # fmt: skip


def scope_dict(msg: pb.OutOfScope) -> dict[str, Any]:
    """A wire scope verdict as the JSON of an answer's ``fleetvl.out_of_scope``."""
    return {"score": round(msg.score, 4), "threshold": round(msg.threshold, 4),
            "out_of_scope": msg.score >= msg.threshold, "part": msg.part,
            "scene": msg.scene}  # fmt: skip
