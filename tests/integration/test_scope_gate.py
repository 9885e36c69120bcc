"""The out-of-scope verdict on the shipped fleet-edge model, calibrated as a site would:
the engine refuses before prefill, the agent answers ``unanswerable`` in OpenAI's refusal
shape (HTTP, SSE, the stock ``openai`` client), counts it per source, and escalates instead
when the policy says so. The router behind the agent is its ``simulated`` backend (a fake
model server, named as one): the cloud side's own refusal is tested with the cloud worker."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from fleetvl.vlm.bundle_manifest import file_sha256
from fleetvl.vlm.calibration import load_calibration, load_scope
from fleetvl_tools.fleetdata import Sample, generate
from tests.edge_harness import FakeWanLink, metric, start_agent, start_router, wait_for

SITE = "scope-site"
FROZEN_S = 1.5  # the agent's frozen-feed window (short: the test waits it out)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _noise(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (168, 168, 3), dtype=np.uint8))


def _url(img: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(img)).decode()


def _body(img: Image.Image, question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "edge", "max_tokens": 8, **extra, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _url(img)}},
        {"type": "text", "text": question}]}]}  # fmt: skip


def test_calibration_names_the_data_its_scope_was_fitted_on(fleet_bundle: Path) -> None:
    cal = load_calibration(fleet_bundle)
    assert cal is not None
    s = cal.out_of_scope
    assert s is not None
    data = fleet_bundle.with_name(fleet_bundle.name + "-data") / "calib.jsonl"
    assert s.fitted_on_sha256 == file_sha256(data)
    assert s.sha256 == file_sha256(fleet_bundle / s.file)
    assert sorted(s.classes) == ["breaker", "gauge", "oil_level", "seven_segment", "shelf",
                                 "thermal"]  # fmt: skip
    assert s.cross_fitted_false_alarm <= 0.05


def test_engine_refuses_noise_before_prefill_and_answers_fleet_questions(
    fleet_bundle: Path,
) -> None:
    from edge_agent.engine import EdgeEngine
    from fleetvl.answers import answer_matches
    from fleetvl.sampling import SamplingParams

    engine = EdgeEngine(fleet_bundle)
    scope = load_scope(fleet_bundle, load_calibration(fleet_bundle))
    params = SamplingParams(max_tokens=8)

    def ask(img: Image.Image, q: str):  # noqa: ANN202
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        return engine.generate(engine.encode(msgs, [img]), params, scope=scope,
                               refuse_out_of_scope=True)  # fmt: skip

    for seed in range(3):
        r = ask(_noise(seed), "Is breaker 2 open or closed?")
        assert r.finish_reason == "out_of_scope"
        assert r.token_ids == []
        assert r.scope is not None
        assert r.scope.out_of_scope
        assert r.timings.prefill_s == 0.0  # refused before the decoder ran
    fresh = list(generate("heldout", 24, seed=77))
    answers = [ask(s.image, s.question) for s in fresh]
    assert sum(a.finish_reason == "out_of_scope" for a in answers) <= 1
    right = sum(answer_matches(a.text, s.answer) for a, s in zip(answers, fresh, strict=True))
    assert right >= 20


@pytest.fixture(scope="module")
def agent(fleet_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("scope-agent")
    cfg = {"site": SITE, "bundle": str(fleet_bundle), "model": "edge",
           "spool": {"path": str(tmp / "spool.sqlite")}, "gate": {"frozen_after_s": FROZEN_S},
           "policies": {"global": {"min_confidence": 0.9, "residency": "edge_only"}}}  # fmt: skip
    proc, url = start_agent(tmp, cfg)
    yield url
    proc.stop()


def test_out_of_scope_frame_is_refused_with_its_reason_and_counted(agent: str) -> None:
    before = metric(agent, "fleetvl_edge_unanswerable_total", source="cam-3")
    r = httpx.post(agent + "/v1/chat/completions", timeout=30,
                   json=_body(_noise(1), "What does the gauge read?", source="cam-3"))  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    msg = body["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["refusal"].startswith("unanswerable:")
    f = body["fleetvl"]
    assert f["verdict"] == "unanswerable"
    assert f["out_of_scope"]["out_of_scope"] is True
    assert f["out_of_scope"]["part"] in ("camera", "vision")
    assert f["out_of_scope"]["scene"] == "gauge"
    assert metric(agent, "fleetvl_edge_unanswerable_total", source="cam-3") == before + 1
    assert metric(agent, "fleetvl_edge_scope_verdicts_total", source="cam-3") >= 1

    client = openai.OpenAI(base_url=agent + "/v1", api_key="unused")
    sample = next(iter(generate("heldout", 1, seed=5)))
    ok = client.chat.completions.create(**_body(sample.image, sample.question),
                                        extra_body={"source": "cam-4"})  # fmt: skip
    assert ok.choices[0].message.refusal is None
    assert ok.choices[0].message.content == sample.answer
    refused = client.chat.completions.create(**_body(_noise(2), sample.question))
    assert refused.choices[0].message.content is None
    assert "out-of-scope score" in (refused.choices[0].message.refusal or "")


def test_a_frozen_feed_is_refused_until_the_picture_changes(agent: str) -> None:
    first, second = generate("heldout", 2, seed=9)

    def ask(sample: Sample) -> dict[str, Any]:
        r = httpx.post(agent + "/v1/chat/completions", timeout=30,
                       json=_body(sample.image, sample.question, source="cam-frozen"))  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()

    # Several questions about one snapshot are not a frozen camera.
    for _ in range(3):
        assert ask(first)["fleetvl"].get("verdict") != "unanswerable"
    time.sleep(FROZEN_S + 0.2)
    stale = ask(first)
    assert stale["fleetvl"]["verdict"] == "unanswerable"
    assert stale["fleetvl"]["out_of_scope"]["part"] == "frozen"
    assert stale["choices"][0]["message"]["content"] is None
    assert metric(agent, "fleetvl_edge_scope_verdicts_total", source="cam-frozen",
                  verdict="frozen") >= 1  # fmt: skip
    # A new picture from the same camera is answered again.
    live = ask(second)
    assert live["fleetvl"].get("verdict") != "unanswerable"
    assert live["choices"][0]["message"]["content"] == second.answer


def test_streamed_refusal_comes_as_a_refusal_delta(agent: str) -> None:
    chunks = []
    with httpx.stream("POST", agent + "/v1/chat/completions", timeout=30,
                      json=_body(_noise(3), "Which shelf row is empty?", stream=True)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    refusals = [c["choices"][0]["delta"].get("refusal") for c in chunks]
    assert any(x and x.startswith("unanswerable:") for x in refusals)
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-1]["fleetvl"]["verdict"] == "unanswerable"


def test_policy_escalate_sends_out_of_scope_frames_to_the_cloud(
    fleet_bundle: Path, tmp_path: Path
) -> None:
    backends = [{"name": "cloud", "type": "simulated", "slots": 8,
                 "simulated": {"answer": "cloud looked", "output_tokens": 2}},
                {"name": "site-agent", "type": "agent", "site": SITE, "slots": 2}]  # fmt: skip
    router, _url_, grpc_port = start_router(tmp_path, backends)
    link = FakeWanLink(grpc_port)
    link.start()
    cfg = {"site": SITE, "bundle": str(fleet_bundle), "model": "edge",
           "spool": {"path": str(tmp_path / "spool.sqlite")},
           "router": {"target": f"127.0.0.1:{link.port}", "model": "cloud", "backoff_s": 0.05,
                      "cloud_rtt_ms": 50},
           "policies": {"global": {"on_out_of_scope": "escalate",
                                   "deadline_ms": 8000}}}  # fmt: skip
    proc, url = start_agent(tmp_path, cfg, name="escalating")
    try:
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "up", 30, "uplink")
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       json=_body(_noise(4), "Is breaker 1 open or closed?"))  # fmt: skip
        assert r.status_code == 200, r.text
        f = r.json()["fleetvl"]
        assert f["served_by"] == "cloud"
        assert f["escalation_reason"] == "out_of_scope"
        assert r.json()["choices"][0]["message"]["content"].startswith("cloud looked")
        # The request can override the site: refuse at once, no escalation.
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       json=_body(_noise(5), "Is breaker 1 open or closed?",
                                  sla={"on_out_of_scope": "refuse"}))  # fmt: skip
        assert r.json()["fleetvl"]["verdict"] == "unanswerable"
    finally:
        proc.stop()
        link.cut()
        router.stop()
