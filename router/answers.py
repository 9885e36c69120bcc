"""The router's HTTP answer bodies: OpenAI's ``chat.completion`` (or its stream's closing
chunks) plus the ``fleetvl`` object.

An answer has a verdict (``fleetvl.verdict``): ``answer``, or ``unanswerable`` when the
serving model refused the input as out of its scope. An unanswerable answer takes OpenAI's
refusal shape — ``message.content`` null and ``message.refusal`` saying why (in a stream, one
delta ``{"role": "assistant", "refusal": ...}``) — with ``finish_reason`` ``stop``, and
``fleetvl.out_of_scope`` carries the score (set whenever the serving model scored the input).
It is an answer, not an error: the request's outcome is ``ok``.
"""

from __future__ import annotations

import time

from fleetvl.protocol.answer_section import FleetvlSection
from fleetvl.protocol.convert import scope_dict
from fleetvl.protocol.openai_api import answer_message
from router.backends import Final
from router.tickets import Ticket
from router.wire import wire_scope

__all__ = [
    "closing_deltas",
    "completion_body",
    "fleetvl_section",
    "openai_finish",
    "served_by",
    "usage",
]


def served_by(t: Ticket, final: Final) -> str:
    """edge | cloud | cache: what the backend said, else the backend's kind."""
    return final.served_by or (t.outcome.kind or "cloud")


def openai_finish(final: Final) -> str:
    """OpenAI's finish reason; the precise one is in ``fleetvl.finish_reason``."""
    return "length" if final.finish_reason == "length" else "stop"


def usage(final: Final) -> dict[str, int]:
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
    }


def _scope_json(final: Final) -> dict[str, object] | None:
    msg = wire_scope(final)
    return scope_dict(msg) if msg is not None else None


def completion_body(
    rid: str, model: str, t: Ticket, final: Final, text: str,
    logprobs: dict[str, object] | None = None,
) -> dict[str, object]:
    """The ``chat.completion`` JSON of a finished request (``text``: the streamed answer;
    ``logprobs``: OpenAI's ``choices[].logprobs``, when asked for)."""
    served = served_by(t, final)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": answer_message(text, final.verdict, _scope_json(final)),
                "finish_reason": openai_finish(final),
                "logprobs": logprobs,
            }
        ],
        "usage": usage(final),
        "fleetvl": fleetvl_section(t, final, served),
    }


def closing_deltas(final: Final) -> list[dict[str, object]]:
    """Stream deltas to send after the streamed text and before the finishing chunk: the
    refusal of an unanswerable answer, nothing for an answer."""
    if final.verdict != "unanswerable":
        return []
    message = answer_message(final.text, final.verdict, _scope_json(final))
    return [{"role": "assistant", "refusal": message["refusal"]}]


def fleetvl_section(t: Ticket, final: Final, served: str) -> dict[str, object]:
    """The ``fleetvl`` object of an answer (the same keys streamed or not, and at the agent)."""
    o = t.outcome
    pol = t.policy.policy
    return FleetvlSection(
        verdict=final.verdict,
        out_of_scope=_scope_json(final),
        served_by=served,
        backend=o.backend,
        finish_reason=final.finish_reason,
        confidence=final.confidence,
        confidence_signal=final.confidence_signal,
        meets_min_confidence=final.confidence is None or final.confidence >= pol.min_confidence,
        escalation_reason=t.req.edge_attempt.reason if t.req.edge_attempt else None,
        timings={
            "queue_ms": round(o.queue_s * 1000, 2),
            "ttft_ms": round((o.ttft_s or 0) * 1000, 2),
            "total_ms": round((time.monotonic() - t.started) * 1000, 2),
        },
        policy=t.policy.explain(),
    ).as_json()
