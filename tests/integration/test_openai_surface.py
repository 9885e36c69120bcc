"""The OpenAI surface a user expects, with the stock ``openai`` client, at a site agent and at
the router alike: log-probabilities (plain, streamed, and escalated over gRPC), the usage
chunk of a stream, and the limits checked before any work with the same status at every tier.
The router's backend is the fleet-edge bundle in process; the agent escalates to it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fleetvl_tools.fleetdata import generate
from tests.edge_harness import start_agent, start_router, wait_for

SITE = "surface"
MODEL = "fleet"


@pytest.fixture(scope="module")
def tiers(fleet_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("surface")
    backends = [{"name": "cloud", "type": "engine", "bundle": str(fleet_bundle),
                 "models": [MODEL], "slots": 1},
                {"name": "site", "type": "agent", "site": SITE, "slots": 1}]  # fmt: skip
    router, router_url, grpc_port = start_router(tmp, backends)
    cfg = {"site": SITE, "bundle": str(fleet_bundle), "model": MODEL,
           "spool": {"path": str(tmp / "spool.sqlite")},
           "router": {"target": f"127.0.0.1:{grpc_port}", "model": MODEL},
           "policies": {"global": {"deadline_ms": 20000}}}  # fmt: skip
    agent, agent_url = start_agent(tmp, cfg)
    try:
        wait_for(lambda: httpx.get(agent_url + "/healthz").json()["uplink"] == "up", 30, "uplink")
        yield {name: openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
               for name, url in (("agent", agent_url), ("router", router_url))}  # fmt: skip
    finally:
        agent.stop()
        router.stop()


def _messages(images: int = 1) -> list:
    s = next(iter(generate("heldout", 1, seed=3)))
    buf = io.BytesIO()
    s.image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    parts: list = [{"type": "image_url", "image_url": {"url": url}} for _ in range(images)]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": s.question}]}]


@pytest.mark.parametrize("tier", ["agent", "router"])
def test_log_probabilities_plain_streamed_and_escalated(tiers: dict, tier: str) -> None:
    c = tiers[tier]
    r = c.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4,
                                  logprobs=True, top_logprobs=3)  # fmt: skip
    toks = r.choices[0].logprobs.content
    assert toks
    assert "".join(t.token for t in toks).startswith(r.choices[0].message.content)
    for t in toks:
        assert len(t.top_logprobs) == 3
        assert t.logprob <= 0
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
    chunks = list(c.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4,
                                            logprobs=True, top_logprobs=1, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    streamed = [t for ch in chunks for x in ch.choices if x.logprobs for t in x.logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in toks]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(toks)
    # min_confidence 1.0: the agent escalates; the tokens' log-probabilities cross the wire.
    r = c.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4,
                                  logprobs=True, extra_body={"sla": {"min_confidence": 1.0}})
    assert r.model_extra["fleetvl"]["served_by"] == "cloud"
    assert [t.token for t in r.choices[0].logprobs.content] == [t.token for t in toks]
    plain = c.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("tier", ["agent", "router"])
def test_limits_give_the_same_status_at_every_tier_before_any_work(
    tiers: dict, tier: str
) -> None:
    c = tiers[tier]
    cases = [
        ({"messages": _messages(images=12)}, 400, "too_many_images"),
        ({"messages": [{"role": "user", "content": "word " * 240_000}]}, 400,
         "context_length_exceeded"),
        ({"messages": _messages(), "model": "no-such-model"}, 404, "model_not_found"),
        ({"messages": _messages(), "n": 2}, 400, "unsupported_parameter"),
        ({"messages": _messages(), "response_format": {"type": "json_object"}}, 400,
         "unsupported_parameter"),
    ]  # fmt: skip
    for kwargs, status, code in cases:
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(**{"model": MODEL, "max_tokens": 4, **kwargs})
        assert (err.value.status_code, err.value.code) == (status, code), err.value.message
    assert MODEL in [m.id for m in c.models.list()]
