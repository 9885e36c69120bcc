"""OpenAI-compatible request and response bodies, plus FleetVL's additions.

The request accepts what the stock ``openai`` client sends for chat completions; FleetVL's
fields (``sla``, ``site``, ``top_k``) arrive through ``extra_body``. Fields we do not implement
are refused with a reason (``n`` > 1, tools, ...) rather than silently ignored, except
harmless client metadata, which is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetvl.errors import InvalidFields
from fleetvl.policy import PolicyOverride, error_details
from fleetvl.vlm.confidence import TokenLogprob

__all__ = [
    "SLA_HEADERS",
    "answer_message",
    "logprobs_json",
    "refusal_text",
    "SlaHeaderError",
    "request_sla",
    "ChatCompletionRequest",
    "ChatMessage",
    "ImageUrl",
    "ImageUrlPart",
    "TextPart",
]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] = "auto"


class ImageUrlPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImageUrlPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name"
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    @field_validator("content")
    @classmethod
    def _not_empty(cls, v: str | list[ContentPart]) -> str | list[ContentPart]:
        if isinstance(v, list) and not v:
            raise ValueError("content must not be an empty list")
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")  # json_schema carries its schema
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(BaseModel):
    # Unknown fields are refused: a typo'd SLA field must not pass silently.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=128)  # n > 1: a clear 400 (one choice per request)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None  # text only; others: a clear 400
    user: str | None = Field(default=None, max_length=256)
    # FleetVL (extra_body)
    sla: PolicyOverride | None = None
    site: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[\w.-]+$")
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[\w.:/-]+$",
        description="The camera or application the image comes from (e.g. cam-3): "
        "out-of-scope answers are counted per source and a run of them raises a site health "
        "alert at the controller.",
    )
    # Harmless client metadata the openai client may send.
    metadata: dict[str, str] | None = None  # OpenAI's: string values
    store: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("at most 4 stop sequences of 1-64 characters")
        return v

    @model_validator(mode="after")
    def _has_user_turn(self) -> ChatCompletionRequest:
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages must contain a user message")
        return self

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# The SLA can also come in headers, for clients that cannot add body fields.
SLA_HEADERS = {
    "x-fleetvl-deadline-ms": "deadline_ms",
    "x-fleetvl-ttft-target-ms": "ttft_target_ms",
    "x-fleetvl-min-confidence": "min_confidence",
    "x-fleetvl-residency": "residency",
    "x-fleetvl-priority": "priority",
    "x-fleetvl-on-uplink-down": "on_uplink_down",
    "x-fleetvl-max-output-tokens": "max_output_tokens",
    "x-fleetvl-cache": "cache",
    "x-fleetvl-on-out-of-scope": "on_out_of_scope",
}


class SlaHeaderError(InvalidFields):
    """SLA headers that do not validate; ``details`` name each offending header (HTTP 422)."""

    def __init__(self, details: list[dict[str, object]]) -> None:
        super().__init__("SLA headers are invalid", details)


def request_sla(sla: PolicyOverride | None, headers: Mapping[str, str]) -> PolicyOverride | None:
    """A request's SLA override: the ``x-fleetvl-*`` headers, with the body's ``sla`` fields
    taking precedence where both are given.

    Raises:
        SlaHeaderError: a header's value is invalid.
    """
    given = {f: headers[h] for h, f in SLA_HEADERS.items() if h in headers}
    if not given:
        return sla
    merged = {**given, **(sla.model_dump(exclude_none=True) if sla else {})}
    try:
        return PolicyOverride.model_validate(merged)
    except ValidationError as exc:
        header = {f: h for h, f in SLA_HEADERS.items()}
        raise SlaHeaderError(
            [{**d, "field": header.get(d["field"], d["field"])} for d in error_details(exc)]
        ) from None


def _num(v: object, default: float) -> float:
    return float(v) if isinstance(v, int | float) else default


def refusal_text(scope: Mapping[str, object]) -> str:
    """The ``message.refusal`` of an ``unanswerable`` answer, from its scope verdict
    (``score``, ``threshold``, ``part``, ``scene``): what a person reading it needs to act."""
    what = {
        "camera": "the image does not look like what this site's camera should show "
        "(covered, dark, blurred, glare, misaimed or broken)",
        "vision": "the image shows nothing this model was trained to read",
        "frozen": "this camera has sent the identical picture for too long (a frozen feed)",
    }.get(str(scope.get("part")), "the input is out of this model's scope")
    about = f", the question is about a {scope['scene']} scene" if scope.get("scene") else ""
    return (
        f"unanswerable: {what}; out-of-scope score {_num(scope.get('score'), 0.0):.2f} >= "
        f"{_num(scope.get('threshold'), 1.0):.2f} ({scope.get('part')} part{about})"
    )


def logprobs_json(tokens: Sequence[TokenLogprob] | None) -> dict[str, object] | None:
    """OpenAI's ``choices[].logprobs`` for these tokens (None: none were asked for)."""
    if tokens is None:
        return None
    return {"content": [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
         "top_logprobs": [{"token": a, "logprob": v, "bytes": list(a.encode())}
                          for a, v in t.top]}
        for t in tokens
    ], "refusal": None}  # fmt: skip


def answer_message(
    text: str, verdict: str, scope: Mapping[str, object] | None
) -> dict[str, object]:
    """The ``choices[0].message`` of a chat completion: the answer, or for the verdict
    ``unanswerable`` OpenAI's refusal shape (``content`` null, ``refusal`` says why), which
    the stock ``openai`` client exposes as ``message.refusal``."""
    if verdict == "unanswerable":
        return {"role": "assistant", "content": None, "refusal": refusal_text(scope or {})}
    return {"role": "assistant", "content": text}
