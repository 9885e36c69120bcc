"""The cloud worker on a local Ray cluster (num_cpus=2) behind Serve's gRPC proxy: real
gRPC on loopback, the router's remote dispatch in front, a replica killed mid-request, and a
cancelled stream freeing its slot."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from tests.helpers import png_bytes, random_image
from tests.redis_servers import free_port
from tests.router_harness import RunningRouter

ray = pytest.importorskip("ray", reason="the cloud worker's tests need ray[serve]")
serve = pytest.importorskip("ray.serve")

APP = "fleetvl-cloud"
# Answers are cached in the shared local Redis: a per-run tag keeps runs from reusing them.
QUESTION = f"What does the gauge read? (run {secrets.token_hex(3)})"


@pytest.fixture(scope="module")
def cloud(tiny_checkpoint: Path) -> Iterator[str]:
    from cloud_worker.serve_app import VLMWorker

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(
        http_options={"port": free_port()},
        grpc_options={
            "port": port,
            "grpc_servicer_functions": [
                "fleetvl.protocol.fleetvl_pb2_grpc.add_RouterServicer_to_server"
            ],
        },
    )
    app = VLMWorker.options(
        num_replicas=1, autoscaling_config=None, ray_actor_options={"num_cpus": 1}
    ).bind(
        model_dir=str(tiny_checkpoint),
        max_slots=4,
        max_context=1024,
        redis_url="redis://127.0.0.1:6379/0",
    )
    serve.run(app, name=APP, route_prefix="/" + APP)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _request(image: bytes | None = None, max_tokens: int = 8) -> pb.GenerateRequest:
    parts = [pb.ContentPart(text=QUESTION)]
    if image is not None:
        parts.insert(0, pb.ContentPart(image=pb.Image(data=image)))
    return pb.GenerateRequest(
        model="fleet-cloud",
        messages=[pb.Message(role="user", content=parts)],
        sampling=pb.Sampling(max_tokens=max_tokens),
    )


async def _collect(target: str, req: pb.GenerateRequest, timeout: float = 60) -> list:
    async with grpc.aio.insecure_channel(target) as ch:
        call = pb_grpc.RouterStub(ch).Generate(
            req, timeout=timeout, metadata=(("application", APP),)
        )
        return [c async for c in call]


def test_generate_through_serve_grpc_matches_the_engine(cloud: str, tiny_checkpoint: Path) -> None:
    from cloud_worker.engine import CloudEngine, EngineConfig
    from fleetvl.sampling import SamplingParams

    image = png_bytes(random_image(90, 120, seed=4))
    chunks = asyncio.run(_collect(cloud, _request(image)))
    final = chunks[-1].final
    assert final.served_by == "cloud"
    assert "".join(c.delta.text for c in chunks[:-1]) == final.text or final.text.endswith("\ufffd")
    local = CloudEngine(tiny_checkpoint, EngineConfig(max_slots=1, max_context=1024))
    try:
        want = local.generate(
            local.encode([{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": QUESTION}]}],
                [image]),
            SamplingParams(max_tokens=8),
        )  # fmt: skip
    finally:
        local.close()
    assert final.text == want.text
    assert final.usage.completion_tokens == len(want.token_ids)


def test_router_dispatches_to_the_serve_app(cloud: str) -> None:
    cfg = {"backends": [{"name": "ray-cloud", "type": "grpc", "target": cloud,
                         "models": ["fleet-cloud"], "slots": 4}]}  # fmt: skip
    with RunningRouter(cfg) as router:
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)

        async def many() -> list:
            aclient = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
            return await asyncio.gather(*(
                aclient.chat.completions.create(
                    model="fleet-cloud", max_tokens=6,
                    messages=[{"role": "user", "content": f"Reading of meter {i}? {QUESTION}"}],
                ) for i in range(6)
            ))  # fmt: skip

        answers = asyncio.run(many())
        assert all(a.model_extra["fleetvl"]["backend"] == "ray-cloud" for a in answers)
        assert all(a.usage.completion_tokens >= 1 for a in answers)
        one = client.chat.completions.create(
            model="fleet-cloud", max_tokens=6,
            messages=[{"role": "user", "content": f"Reading of meter 0? {QUESTION}"}],
        )  # fmt: skip
        assert one.choices[0].message.content == answers[0].choices[0].message.content


def _stats() -> dict:
    return serve.get_app_handle(APP).stats.remote().result()


def test_cancelled_stream_frees_its_slot(cloud: str) -> None:
    async def cancel_after_three() -> int:
        async with grpc.aio.insecure_channel(cloud) as ch:
            call = pb_grpc.RouterStub(ch).Generate(
                _request(max_tokens=600), timeout=60, metadata=(("application", APP),)
            )
            n = 0
            async for _ in call:
                n += 1
                if n == 3:
                    call.cancel()
                    break
            return n

    assert asyncio.run(cancel_after_three()) == 3
    deadline = time.monotonic() + 10
    while _stats()["running"]:
        assert time.monotonic() < deadline, "the cancelled request kept its slot"
        time.sleep(0.1)


def test_killed_replica_fails_the_request_clearly_and_the_app_recovers(cloud: str) -> None:
    async def long_request() -> None:
        async with grpc.aio.insecure_channel(cloud) as ch:
            call = pb_grpc.RouterStub(ch).Generate(
                _request(max_tokens=900), timeout=30, metadata=(("application", APP),)
            )
            n = 0
            async for _ in call:
                n += 1
                if n == 2:
                    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                             if a["name"].startswith("SERVE_REPLICA::" + APP)]  # fmt: skip
                    assert names, ray.util.list_named_actors(all_namespaces=True)
                    for name in names:
                        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)

    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(long_request())
    assert time.monotonic() - t0 < 30  # within its deadline
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)  # fmt: skip
    assert err.value.details()
    # Serve replaces the replica; the app answers again.
    deadline = time.monotonic() + 90
    while True:
        try:
            chunks = asyncio.run(_collect(cloud, _request(max_tokens=4), timeout=20))
            if chunks and chunks[-1].WhichOneof("kind") == "final":
                break
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, "the app did not recover"
        time.sleep(1)


def test_repeated_greedy_requests_are_answered_from_the_cache_before_admission(
    cloud: str,
) -> None:
    """The worker writes answers; the router answers a repeat from them before admission (the
    worker decodes nothing), per tenant, as each request's cache mode says."""
    cfg = {"backends": [{"name": "ray-cloud", "type": "grpc", "target": cloud,
                         "models": ["fleet-cloud"], "slots": 4}],
           "redis_url": "redis://127.0.0.1:6379/0"}  # fmt: skip
    with RunningRouter(cfg) as router:
        target = router.grpc_target

        async def ask(req: pb.GenerateRequest) -> pb.Final:
            async with grpc.aio.insecure_channel(target) as ch:
                chunks = [c async for c in pb_grpc.RouterStub(ch).Generate(req, timeout=60)]
            return chunks[-1].final

        req = _request(max_tokens=7)
        req.tenant = "grid"
        req.messages[0].content[0].text += " (answer cache)"
        first = asyncio.run(ask(req))
        assert first.served_by == "cloud"
        deadline = time.monotonic() + 5
        while True:  # the answer is written after it is sent
            steps = _stats()["decode_steps"]
            again = asyncio.run(ask(req))
            if again.served_by == "cache" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert again.served_by == "cache"
        assert again.text == first.text
        assert _stats()["decode_steps"] == steps  # the worker did not run it
        other = pb.GenerateRequest()
        other.CopyFrom(req)
        other.tenant = "shop"
        assert asyncio.run(ask(other)).served_by == "cloud"  # tenants share no answer
        sampled = _request(max_tokens=5)
        sampled.sampling.temperature = 0.8
        served = {asyncio.run(ask(sampled)).served_by for _ in range(2)}
        assert served == {"cloud"}  # fresh randomness was asked for: never replayed
        # cache: read reuses what is stored and stores nothing.
        private = _request(max_tokens=6)
        private.messages[0].content[0].text += " (read only)"
        private.sla.cache = "read"
        served = set()
        for _ in range(3):
            served.add(asyncio.run(ask(private)).served_by)
            time.sleep(0.3)  # time for a write, had there been one
        assert served == {"cloud"}
        reader = pb.GenerateRequest()
        reader.CopyFrom(req)
        reader.sla.cache = "read"
        assert asyncio.run(ask(reader)).served_by == "cache"  # and reads
        # A site agent's probe: the cached answer, or NOT_FOUND at once.
        probe = pb.GenerateRequest()
        probe.CopyFrom(req)
        probe.cache_only = True
        assert asyncio.run(ask(probe)).served_by == "cache"
        probe.messages[0].content[0].text += " never asked"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            asyncio.run(ask(probe))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
