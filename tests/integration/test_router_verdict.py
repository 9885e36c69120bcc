"""The verdict ``unanswerable`` end to end: the cloud worker's Serve app (its deployment class
run without Ray, behind a real gRPC server) on the tiny checkpoint with a scope model, the
router in front of it over gRPC, clients over real HTTP — raw JSON, SSE, and the stock
``openai`` client — and the router's own gRPC API, which passes the Final through."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from tests.cloud_scope import in_scope, noise_image, scoped_checkpoint
from tests.redis_servers import free_port
from tests.router_harness import RunningRouter

pytest.importorskip("ray", reason="the cloud worker's Serve app needs ray[serve]")

MODEL = "fleet-cloud"
BACKEND = "cloud-scoped"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _ServedWorker:
    """The Serve app's ``VLMWorker`` class behind a grpc.aio server on its own event loop:
    what Serve's gRPC proxy does, without a Ray cluster. ``requests`` holds what arrived."""

    def __init__(self, model_dir: Path) -> None:
        from cloud_worker.serve_app import VLMWorker

        self.worker = VLMWorker.func_or_class(str(model_dir), max_slots=4, max_context=1024)
        self.requests: list[pb.GenerateRequest] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        outer = self

        class Servicer(pb_grpc.RouterServicer):
            async def Generate(self, request, context):  # noqa: ANN001, ANN202, N802
                outer.requests.append(request)
                async for chunk in outer.worker.Generate(request):
                    yield chunk

        async def main() -> None:
            server = grpc.aio.server()
            pb_grpc.add_RouterServicer_to_server(Servicer(), server)
            server.add_insecure_port(self.target)
            await server.start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await server.stop(1)

        self.loop.run_until_complete(main())

    def __enter__(self) -> _ServedWorker:
        self.thread.start()
        assert self._ready.wait(30), "worker's gRPC server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.worker.engine.close()


@pytest.fixture(scope="module")
def served(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[_ServedWorker, RunningRouter]]:
    model_dir = scoped_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("scoped") / "model")
    cfg = {
        "policies": {"global": {"deadline_ms": 30000}},
        "backends": [{"name": BACKEND, "type": "grpc", "target": "", "models": [MODEL],
                      "slots": 4}],
    }  # fmt: skip
    with _ServedWorker(model_dir) as worker:
        cfg["backends"][0]["target"] = worker.target
        with RunningRouter(cfg) as router:
            yield worker, router


def _messages(image: bytes, question: str) -> list[dict[str, Any]]:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]  # fmt: skip


NOISE = _png(noise_image(seed=1))
QUESTION = "What does the gauge read?"


def _unanswerable(fv: dict[str, Any]) -> None:
    assert fv["verdict"] == "unanswerable"
    assert fv["finish_reason"] == "out_of_scope"
    scope = fv["out_of_scope"]
    assert scope["out_of_scope"] is True
    assert scope["score"] >= scope["threshold"]
    assert scope["part"] == "camera"
    assert scope["scene"] in {"gauge", "breaker", "thermal", "shelf"}


def _unanswerable_count() -> float:
    return (
        REGISTRY.get_sample_value("fleetvl_router_unanswerable_total", {"backend": BACKEND}) or 0.0
    )


def test_unanswerable_comes_back_in_the_refusal_shape_over_http(
    served: tuple[_ServedWorker, RunningRouter], caplog: pytest.LogCaptureFixture
) -> None:
    worker, router = served
    caplog.set_level(logging.INFO, logger="fleetvl.router")
    caplog.set_level(logging.INFO, logger="fleetvl.cloud")
    before = _unanswerable_count()
    rid = f"verdict-{time.monotonic_ns()}"
    r = httpx.post(
        router.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": _messages(NOISE, QUESTION), "max_tokens": 8,
              "source": "cam-3"},
        headers={"x-request-id": rid},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] is None
    assert choice["message"]["refusal"].startswith("unanswerable:")
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 0
    _unanswerable(body["fleetvl"])
    assert body["fleetvl"]["served_by"] == "cloud"
    assert body["fleetvl"]["backend"] == BACKEND
    # The source travels to the backend; the refusal is counted, as an answer, not an error.
    assert worker.requests[-1].source == "cam-3"
    assert _unanswerable_count() == before + 1
    # One log line each, in the router and in the cloud worker, naming the verdict.
    lines = {x.name: json.loads(x.getMessage()) for x in caplog.records if rid in x.getMessage()}
    assert set(lines) == {"fleetvl.router", "fleetvl.cloud"}
    routed = lines["fleetvl.router"]
    assert (routed["status"], routed["outcome"], routed["verdict"]) == (200, "ok", "unanswerable")
    cloud = lines["fleetvl.cloud"]
    assert (cloud["verdict"], cloud["finish_reason"], cloud["source"]) == (
        "unanswerable",
        "out_of_scope",
        "cam-3",
    )
    assert cloud["scope_part"] == "camera"


def test_unanswerable_streams_one_refusal_delta(
    served: tuple[_ServedWorker, RunningRouter],
) -> None:
    _, router = served
    chunks = []
    with httpx.stream(
        "POST", router.url + "/v1/chat/completions", timeout=60,
        json={"model": MODEL, "messages": _messages(NOISE, QUESTION), "max_tokens": 8,
              "stream": True},
    ) as r:  # fmt: skip
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line.removeprefix("data: "))
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    refusals = [d for d in deltas if "refusal" in d]
    assert len(refusals) == 1
    assert refusals[0]["role"] == "assistant"
    assert refusals[0]["refusal"].startswith("unanswerable:")
    assert not any(d.get("content") for d in deltas)
    last = events[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["choices"][0]["delta"] == {}
    _unanswerable(last["fleetvl"])
    # The refusal comes before the finishing chunk, in the SSE framing of any answer.
    assert deltas.index(refusals[0]) == len(deltas) - 2


def test_the_openai_client_sees_a_refusal_and_an_answer(
    served: tuple[_ServedWorker, RunningRouter],
) -> None:
    _, router = served
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    refused = client.chat.completions.create(
        model=MODEL, messages=_messages(NOISE, QUESTION), max_tokens=8,
        extra_body={"source": "cam-7"},
    )  # fmt: skip
    msg = refused.choices[0].message
    assert msg.content is None
    assert msg.refusal is not None
    assert "out-of-scope score" in msg.refusal
    _unanswerable(refused.model_extra["fleetvl"])

    stream = client.chat.completions.create(
        model=MODEL, messages=_messages(NOISE, QUESTION), max_tokens=8, stream=True
    )
    got = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.refusal or "" for c in got) == msg.refusal
    assert "".join(c.choices[0].delta.content or "" for c in got) == ""

    scene = in_scope(1)[0]
    answered = client.chat.completions.create(
        model=MODEL, messages=_messages(_png(scene.image), scene.question), max_tokens=4
    )
    amsg = answered.choices[0].message
    assert amsg.refusal is None
    assert isinstance(amsg.content, str)
    fv = answered.model_extra["fleetvl"]
    assert fv["verdict"] == "answer"
    assert fv["out_of_scope"]["out_of_scope"] is False
    assert fv["out_of_scope"]["score"] < fv["out_of_scope"]["threshold"]


def test_grpc_passes_the_final_through(served: tuple[_ServedWorker, RunningRouter]) -> None:
    worker, router = served
    request = pb.GenerateRequest(
        model=MODEL, source="cam-9", sampling=pb.Sampling(max_tokens=8),
        messages=[pb.Message(role="user", content=[
            pb.ContentPart(image=pb.Image(data=NOISE)), pb.ContentPart(text=QUESTION)])],
    )  # fmt: skip

    async def call() -> list[pb.GenerateChunk]:
        async with grpc.aio.insecure_channel(router.grpc_target) as ch:
            return [c async for c in pb_grpc.RouterStub(ch).Generate(request, timeout=60)]

    chunks = asyncio.run(call())
    final = chunks[-1].final
    assert final.verdict == "unanswerable"
    assert final.finish_reason == "out_of_scope"
    assert final.text == ""
    assert final.usage.completion_tokens == 0
    assert final.HasField("scope")
    assert final.scope.part == "camera"
    assert final.scope.score >= final.scope.threshold
    assert final.backend == BACKEND
    assert worker.requests[-1].source == "cam-9"
