"""Requests in and out of the agent: an OpenAI body to an :class:`AgentRequest`, and an
escalation to a ``fleetvl.v1.GenerateRequest``."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from edge_agent.agent.answers import AgentRequest
from fleetvl.errors import InputError
from fleetvl.policy import PolicyOverride, SlaPolicy
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import sampling_message, scope_message, sla_message
from fleetvl.protocol.image_urls import inspect_image, parse_data_url
from fleetvl.protocol.openai_api import ChatCompletionRequest, ImageUrlPart
from fleetvl.sampling import SamplingParams

if TYPE_CHECKING:
    from edge_agent.agent.config import AgentConfig
    from edge_agent.agent.local import LocalAttempt

__all__ = ["parse_chat", "to_generate_request"]


def parse_chat(
    body: ChatCompletionRequest,
    config: AgentConfig,
    sla: PolicyOverride | None,
    webhook: str | None = None,
) -> AgentRequest:
    """Check images (data URLs only, byte and pixel budgets) and build the request.

    Raises:
        InputError: with the reason (bad image, unknown model, bad sampling values).
    """
    if body.model != config.model:
        raise InputError(
            f"model {body.model!r} is not served here; known models: [{config.model!r}]"
        )
    messages: list[dict[str, Any]] = []
    images: list[bytes] = []
    decoded: list[Any] = []
    digests: list[str] = []
    image_tokens = text_chars = 0
    for m in body.messages:
        if isinstance(m.content, str):
            parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}]
            text_chars += len(m.content)
        else:
            parts = []
            for p in m.content:
                if isinstance(p, ImageUrlPart):
                    data = parse_data_url(p.image_url.url, config.max_image_bytes)
                    img, digest, tokens = inspect_image(
                        data, config.max_image_bytes, config.max_input_pixels
                    )
                    images.append(data)
                    decoded.append(img)
                    digests.append(digest)
                    image_tokens += tokens
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": p.text})
                    text_chars += len(p.text)
        messages.append({"role": m.role, "content": parts})
    params = SamplingParams(
        max_tokens=body.requested_max_tokens or 1,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=tuple(body.stop_list),
    )
    return AgentRequest(
        id=f"req-{uuid.uuid4().hex[:24]}",
        tenant=config.tenant,
        model=body.model,
        messages=messages,
        images=images,
        digests=digests,
        params=params,
        decoded=decoded,
        requested_max_tokens=body.requested_max_tokens,
        sla=sla,
        prompt_tokens_estimate=text_chars // 4 + 8 * len(messages) + image_tokens,
        webhook=webhook,
        source=body.source,
    )


def to_generate_request(
    req: AgentRequest,
    pol: SlaPolicy,
    attempt: LocalAttempt | None,
    reason: str,
    config: AgentConfig,
) -> pb.GenerateRequest:
    """The escalation on the wire, images inline (the client strips them to digests first).

    The request id doubles as the idempotency key: a spooled request replayed after a crash is
    answered by the router from its record instead of running twice.
    """
    images = iter(zip(req.images, req.digests, strict=True))
    messages = []
    for m in req.messages:
        parts = []
        for p in m["content"]:
            if p["type"] == "image":
                data, digest = next(images)
                parts.append(pb.ContentPart(image=pb.Image(digest=digest, data=data)))
            else:
                parts.append(pb.ContentPart(text=p["text"]))
        messages.append(pb.Message(role=m["role"], content=parts))
    edge = None
    if attempt is not None:
        edge = pb.EdgeAttempt(
            text=attempt.text,
            confidence=attempt.verdict.value,
            signal=attempt.verdict.signal,
            reason=reason,
            scope=scope_message(attempt.scope) if attempt.scope is not None else None,
        )
    else:
        edge = pb.EdgeAttempt(reason=reason)
    return pb.GenerateRequest(
        request_id=req.id,
        tenant=req.tenant,
        site=config.site,
        model=(config.router.model if config.router else None) or req.model,
        messages=messages,
        sampling=sampling_message(req.params),
        # Resolved here: the router may tighten but must not loosen it.
        sla=sla_message(pol),
        edge_attempt=edge,
        idempotency_key=req.id,
        source=req.source or "",
    )
