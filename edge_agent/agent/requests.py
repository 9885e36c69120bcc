"""Requests in and out of the agent: an OpenAI body to a
:class:`~fleetvl.protocol.request.ChatRequest`, and an escalation to a
``fleetvl.v1.GenerateRequest``."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fleetvl.policy import PolicyOverride, SlaPolicy
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import scope_message
from fleetvl.protocol.openai_api import ChatCompletionRequest
from fleetvl.protocol.request import ChatRequest

if TYPE_CHECKING:
    from edge_agent.agent.config import AgentConfig
    from edge_agent.agent.local import LocalAttempt

__all__ = ["parse_chat", "to_generate_request"]


def parse_chat(
    body: ChatCompletionRequest,
    config: AgentConfig,
    sla: PolicyOverride | None,
    webhook: str | None = None,
) -> ChatRequest:
    """Check the body against the agent's limits and build the request, images decoded once
    (the local engine takes them as they are).

    Raises:
        InputError: with the reason (unknown model, too many images, prompt too long, a bad
            image, bad sampling values).
    """
    return ChatRequest.from_openai(
        body, config.limits, [config.model], id=f"req-{uuid.uuid4().hex[:24]}",
        tenant=config.tenant, sla=sla, decode=True, webhook=webhook,
    )  # fmt: skip


def to_generate_request(
    req: ChatRequest,
    pol: SlaPolicy,
    attempt: LocalAttempt | None,
    reason: str,
    config: AgentConfig,
) -> pb.GenerateRequest:
    """The escalation on the wire, images inline (the client strips them to digests first).

    The request id doubles as the idempotency key: a spooled request replayed after a crash is
    answered by the router from its record instead of running twice.
    """
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
    return req.to_pb(
        pol,
        # The router may tighten the resolved policy but must not loosen it.
        model=(config.router.model if config.router else None) or req.model,
        site=config.site,
        edge_attempt=edge,
        idempotency_key=req.id,
    )
