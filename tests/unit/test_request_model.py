"""The one request model: an OpenAI body becomes a ChatRequest once, goes on the wire and
comes back the same; every limit is checked before any image is decoded."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fleetvl.errors import ContextLengthExceeded, ModelNotFound, TooManyImages, Unsupported
from fleetvl.policy import PolicyOverride, SlaPolicy
from fleetvl.protocol.openai_api import ChatCompletionRequest
from fleetvl.protocol.request import ChatRequest, RequestLimits
from tests.helpers import png_bytes, random_image

LIMITS = RequestLimits()


def _body(**extra: object) -> ChatCompletionRequest:
    png = png_bytes(random_image(56, 84))
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return ChatCompletionRequest.model_validate({
        "model": "m", "max_tokens": 7, "temperature": 0.5, "seed": 3, "stop": ["\n"],
        "logprobs": True, "top_logprobs": 2, "source": "cam-1",
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                  {"type": "text", "text": "what is it?"}]}],
        **extra,
    })  # fmt: skip


def test_openai_to_wire_and_back_keeps_the_request() -> None:
    req = ChatRequest.from_openai(_body(), LIMITS, ["m"], id="r1", tenant="t",
                                  sla=PolicyOverride(min_confidence=0.9))  # fmt: skip
    img = req.images[0]
    assert img.digest == hashlib.sha256(img.data).hexdigest()
    assert img.tokens > 0
    assert req.params.logprobs == 2
    assert req.params.stop == ("\n",)
    wire = req.to_pb(SlaPolicy(min_confidence=0.9))
    back, missing = ChatRequest.from_pb(wire, LIMITS)
    assert missing == []
    for field in ("id", "model", "messages", "images", "params", "requested_max_tokens",
                  "tenant", "source", "text_chars"):  # fmt: skip
        assert getattr(back, field) == getattr(req, field), field
    assert back.prompt_tokens_estimate == req.prompt_tokens_estimate
    # Without the bytes, the receiver asks for them unless it stores them by digest.
    bare = req.to_pb(with_bytes=set())
    assert ChatRequest.from_pb(bare, LIMITS)[1] == [img.digest]
    kept, missing = ChatRequest.from_pb(bare, LIMITS, stored={img.digest: img.data}.get)
    assert missing == []
    assert kept.images == req.images


def test_limits_are_checked_before_any_image_is_decoded() -> None:
    with pytest.raises(ModelNotFound):
        ChatRequest.from_openai(_body(), LIMITS, ["other"])
    with pytest.raises(TooManyImages):
        ChatRequest.from_openai(_body(), RequestLimits(max_images=0), ["m"])
    long = _body(messages=[{"role": "user", "content": "x" * 400_000}])
    with pytest.raises(ContextLengthExceeded, match="context of 32768"):
        ChatRequest.from_openai(long, LIMITS, None)
    for extra, param in (({"n": 3}, "n"), ({"response_format": {"type": "json_object"}},
                                           "response_format")):  # fmt: skip
        with pytest.raises(Unsupported) as err:
            ChatRequest.from_openai(_body(**extra), LIMITS, ["m"])
        assert err.value.param == param


def test_the_policy_caps_what_was_asked() -> None:
    req = ChatRequest.from_openai(_body(), LIMITS, ["m"])
    req.capped(256)
    assert req.params.max_tokens == 7
    req.capped(4)
    assert req.params.max_tokens == 4
    unasked = ChatRequest.from_openai(_body(max_tokens=None), LIMITS, ["m"])
    unasked.capped(64)
    assert unasked.params.max_tokens == 64
