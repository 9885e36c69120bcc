"""The one request model: a chat request from the OpenAI body (or the wire) to the engine.

A :class:`ChatRequest` is built once per tier, by :meth:`ChatRequest.from_openai` at an HTTP
front (the site agent, the router) or :meth:`ChatRequest.from_pb` at a gRPC one (the router,
the cloud worker, an agent answering a router's call), and written to the wire by
:meth:`ChatRequest.to_pb`. Building it checks every limit before any work, with the same
error at every tier (:class:`RequestLimits`): the model is served here (404), at most
``max_images`` images (400), a prompt that fits ``max_prompt_tokens`` (400
``context_length_exceeded``), then each image's bytes and pixels, hashed and decoded once.

Messages are in the chat template's shape (``{"role", "content": [{"type": "text", "text"},
{"type": "image"}]}``); ``images`` holds the images in the order of their parts.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypedDict

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from fleetvl.errors import (
    ContextLengthExceeded,
    InputError,
    ModelNotFound,
    TooManyImages,
    Unsupported,
)
from fleetvl.policy import PolicyOverride, SlaPolicy
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.convert import sampling_message, sampling_params, sla_message
from fleetvl.protocol.image_urls import inspect_image, parse_data_url
from fleetvl.protocol.openai_api import ChatCompletionRequest, ImageUrlPart
from fleetvl.sampling import SamplingParams

__all__ = ["ChatRequest", "EdgeAttempt", "ImageRef", "RequestLimits", "Turn"]

MiB = 1 << 20
# One chat-template message: {"role": str, "content": [{"type": "text", "text": str} |
# {"type": "image"}]}.
Turn = dict[str, object]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FromPbOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`ChatRequest.from_pb` besides the image callbacks."""

    id: str | None
    tenant: str | None
    deadline_s: float | None
    decode: bool
    default_max_tokens: int


class RequestLimits(BaseModel):
    """What one request may ask for; checked before any work, alike at every tier."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(20 * MiB, ge=1024, description="Largest request body.")
    max_image_bytes: int = Field(10 * MiB, ge=1024, description="Largest image.")
    max_images: int = Field(8, ge=0, description="Images per request.")
    max_input_pixels: int = Field(
        40_000_000, ge=1, description="Decoded pixels per image (bombs are refused from the "
        "header, before decoding)."
    )  # fmt: skip
    max_prompt_tokens: int = Field(
        32_768, ge=16, description="Longest prompt, estimated (about 4 characters a token, "
        "plus each image's tokens): longer ones get 400 context_length_exceeded at once."
    )  # fmt: skip


@dataclass(frozen=True)
class ImageRef:
    """An image of a request: its bytes' sha256, the bytes, its prompt tokens and, where
    the tier runs a model itself, the decoded picture (decoded once, at the API edge)."""

    digest: str
    data: bytes
    tokens: int
    decoded: Image.Image | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class EdgeAttempt:
    """What a site's model made of an escalated request, and why it escalated."""

    reason: str
    text: str = ""
    confidence: float | None = None
    signal: str = ""


@dataclass
class ChatRequest:
    id: str
    model: str
    messages: list[Turn]
    images: list[ImageRef]
    # max_tokens: what the caller asked for, until a tier caps it by policy (:meth:`capped`).
    params: SamplingParams
    requested_max_tokens: int | None = None
    tenant: str = "default"
    site: str | None = None
    source: str | None = None  # the camera or application at the site the image came from
    sla: PolicyOverride | None = None
    edge_attempt: EdgeAttempt | None = None
    deadline_s: float | None = None  # a caller's own deadline (gRPC), seconds from arrival
    cache_only: bool = False  # answer from the shared answer cache or not at all
    text_chars: int = 0
    # Where a queued answer is POSTed once it arrives (a site agent's store-and-forward).
    webhook: str | None = None
    arrival: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def image_tokens(self) -> int:
        return sum(i.tokens for i in self.images)

    @property
    def prompt_tokens_estimate(self) -> int:
        # ~4 characters per token plus the template's per-message overhead: the scheduler
        # only needs the scale, and a front has no tokenizer of every model.
        return _estimate(self.text_chars, len(self.messages), self.image_tokens)

    @property
    def digests(self) -> list[str]:
        return [i.digest for i in self.images]

    def capped(self, cap: int) -> None:
        """Set ``params.max_tokens`` to what was asked, at most ``cap`` (the policy's)."""
        self.params = replace(self.params, max_tokens=min(self.requested_max_tokens or cap, cap))

    # -- building --------------------------------------------------------------------------

    @classmethod
    def from_openai(
        cls,
        body: ChatCompletionRequest,
        limits: RequestLimits,
        models: Sequence[str] | None,
        *,
        id: str | None = None,
        tenant: str = "default",
        sla: PolicyOverride | None = None,
        site: str | None = None,
        decode: bool = False,
        webhook: str | None = None,
    ) -> ChatRequest:
        """Check ``body`` against ``limits`` and build the request; ``models``: the names
        served here (None: any); ``decode`` keeps each decoded image (a tier that runs the
        model itself).

        Raises:
            ModelNotFound: ``body.model`` is not in ``models``.
            Unsupported: ``n`` > 1 or a structured ``response_format``.
            TooManyImages, ContextLengthExceeded, InputError: over a limit, a bad image.
        """
        if models is not None and body.model not in models:
            raise ModelNotFound(body.model, sorted(models))
        _supported(body)
        urls = [p.image_url.url for m in body.messages if not isinstance(m.content, str)
                for p in m.content if isinstance(p, ImageUrlPart)]  # fmt: skip
        if len(urls) > limits.max_images:
            raise TooManyImages(len(urls), limits.max_images)
        chars = 0
        messages: list[Turn] = []
        for m in body.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
                messages.append({"role": m.role, "content": [{"type": "text", "text": m.content}]})
                continue
            parts: list[dict[str, str]] = []
            for p in m.content:
                if isinstance(p, ImageUrlPart):
                    parts.append({"type": "image"})
                else:
                    chars += len(p.text)
                    parts.append({"type": "text", "text": p.text})
            messages.append({"role": m.role, "content": parts})
        _fits(limits, chars, len(messages), 0)
        images = [_image(parse_data_url(u, limits.max_image_bytes), limits, decode) for u in urls]
        _fits(limits, chars, len(messages), sum(i.tokens for i in images))
        top = body.top_logprobs if body.top_logprobs is not None else 0
        params = SamplingParams(
            max_tokens=body.requested_max_tokens or 1,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=tuple(body.stop_list),
            logprobs=top if body.logprobs else None,
        )
        return cls(
            id=id or f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=body.model,
            messages=messages,
            images=images,
            params=params,
            requested_max_tokens=body.requested_max_tokens,
            tenant=tenant,
            site=site or body.site,
            source=body.source,
            sla=sla,
            text_chars=chars,
            webhook=webhook,
        )

    @classmethod
    def from_pb(
        cls,
        msg: pb.GenerateRequest,
        limits: RequestLimits,
        *,
        id: str | None = None,
        tenant: str | None = None,
        stored: Callable[[str], bytes | None] = lambda _d: None,
        keep: Callable[[bytes], object] = lambda _b: None,
        deadline_s: float | None = None,
        decode: bool = False,
        default_max_tokens: int = 256,
    ) -> tuple[ChatRequest, list[str]]:
        """The request a ``GenerateRequest`` carries, and the digests of images sent without
        bytes that ``stored`` could not supply (the caller asks for them: ``NeedImages``).
        ``keep`` is handed the bytes of every valid image sent inline (to store them).

        Raises:
            InputError: no messages, a bad role, bytes that do not match their digest, a bad
                image, an invalid ``sla``; TooManyImages, ContextLengthExceeded.
        """
        if not msg.messages:
            raise InputError("messages must not be empty")
        n_images = sum(p.WhichOneof("part") == "image" for m in msg.messages for p in m.content)
        if n_images > limits.max_images:
            raise TooManyImages(n_images, limits.max_images)
        messages: list[Turn] = []
        images: list[ImageRef] = []
        missing: list[str] = []
        chars = 0
        for m in msg.messages:
            if m.role not in ("system", "user", "assistant"):
                raise InputError(f"message role {m.role!r} is not system, user or assistant")
            parts: list[dict[str, str]] = []
            for p in m.content:
                if p.WhichOneof("part") != "image":
                    chars += len(p.text)
                    parts.append({"type": "text", "text": p.text})
                    continue
                if not p.image.data and msg.cache_only and _SHA256.match(p.image.digest):
                    # Only looked up, never run: the digest is all the answer key needs (the
                    # stored bytes are neither fetched nor decoded).
                    images.append(ImageRef(p.image.digest, b"", 0))
                    parts.append({"type": "image"})
                    continue
                data = p.image.data or stored(p.image.digest)
                if not data:
                    missing.append(p.image.digest)
                    continue
                ref = _image(data, limits, decode)
                if p.image.digest and p.image.digest != ref.digest:
                    raise InputError(f"image digest {p.image.digest[:12]}... does not match "
                                     "its bytes")  # fmt: skip
                if p.image.data:
                    keep(p.image.data)
                images.append(ref)
                parts.append({"type": "image"})
            messages.append({"role": m.role, "content": parts})
        _fits(limits, chars, len(messages), sum(i.tokens for i in images))
        s = msg.sampling
        requested = s.max_tokens if s.HasField("max_tokens") else None
        sla_fields = {f.name: v for f, v in msg.sla.ListFields()} if msg.HasField("sla") else {}
        try:
            sla = PolicyOverride.model_validate(sla_fields) if sla_fields else None
        except ValueError as exc:
            raise InputError(f"invalid sla: {exc}") from None
        attempt = None
        if msg.HasField("edge_attempt"):
            e = msg.edge_attempt
            attempt = EdgeAttempt(e.reason, e.text, e.confidence, e.signal)
        req = cls(
            id=id or msg.request_id or f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=msg.model,
            messages=messages,
            images=images,
            params=sampling_params(s, default_max_tokens=default_max_tokens),
            requested_max_tokens=requested,
            tenant=tenant if tenant is not None else (msg.tenant or "default"),
            site=msg.site or None,
            source=msg.source or None,
            sla=sla,
            edge_attempt=attempt,
            deadline_s=_earliest(deadline_s, msg.budget_ms / 1000 if msg.budget_ms > 0 else None),
            text_chars=chars,
            cache_only=msg.cache_only,
        )
        return req, missing

    # -- writing ---------------------------------------------------------------------------

    def to_pb(
        self,
        policy: SlaPolicy | None = None,
        *,
        with_bytes: set[str] | None = None,
        model: str | None = None,
        site: str | None = None,
        edge_attempt: pb.EdgeAttempt | None = None,
        idempotency_key: str = "",
        budget_s: float | None = None,
        cache_only: bool = False,
    ) -> pb.GenerateRequest:
        """This request on the wire. Images carry their bytes when their digest is in
        ``with_bytes`` (None: all of them), else their digest alone. ``policy``: the resolved
        policy, which the next hop may tighten but must not loosen. ``idempotency_key``: a
        router answers a replay of it from its record instead of running it twice.
        ``budget_s``: the time left to answer, which the next hop makes its deadline."""
        images = iter(self.images)
        messages = []
        for m in self.messages:
            parts = []
            for p in _parts(m):
                if p.get("type") == "image":
                    img = next(images)
                    data = img.data if with_bytes is None or img.digest in with_bytes else b""
                    parts.append(pb.ContentPart(image=pb.Image(digest=img.digest, data=data)))
                else:
                    parts.append(pb.ContentPart(text=str(p.get("text", ""))))
            messages.append(pb.Message(role=str(m["role"]), content=parts))
        return pb.GenerateRequest(
            request_id=self.id,
            tenant=self.tenant,
            site=site or self.site or "",
            model=model or self.model,
            messages=messages,
            sampling=sampling_message(self.params),
            sla=sla_message(policy) if policy is not None else None,
            edge_attempt=edge_attempt,
            idempotency_key=idempotency_key,
            source=self.source or "",
            budget_ms=max(budget_s, 0.001) * 1000 if budget_s is not None else 0.0,
            cache_only=cache_only,
        )


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _parts(m: Turn) -> list[dict[str, object]]:
    content = m["content"]
    assert isinstance(content, list)
    return content


def _supported(body: ChatCompletionRequest) -> None:
    if body.n != 1:
        raise Unsupported("n", f"n={body.n}: one choice per request is supported (n=1); send "
                          "separate requests with different seeds for more")  # fmt: skip
    rf = body.response_format
    if rf is not None and rf.type != "text":
        raise Unsupported("response_format", f"response_format {rf.type!r} is not supported: "
                          "only {'type': 'text'}")  # fmt: skip
    if body.top_logprobs is not None and not body.logprobs:
        raise Unsupported("top_logprobs", "top_logprobs needs logprobs: true")


def _estimate(chars: int, messages: int, image_tokens: int) -> int:
    return chars // 4 + 8 * messages + image_tokens


def _fits(limits: RequestLimits, chars: int, messages: int, image_tokens: int) -> None:
    tokens = _estimate(chars, messages, image_tokens)
    if tokens > limits.max_prompt_tokens:
        raise ContextLengthExceeded(tokens, limits.max_prompt_tokens)


def _image(data: bytes, limits: RequestLimits, decode: bool) -> ImageRef:
    img, digest, tokens = inspect_image(data, limits.max_image_bytes, limits.max_input_pixels)
    return ImageRef(digest, data, tokens, img if decode else None)
