"""The router's in-process engine backend: every registered engine serves behind it; a caller
that leaves mid-stream stops the engine, and the engine goes back to the pool only once its
thread has let go of it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cloud_worker.engine import CloudEngine
from edge_agent.engine import CachedEngine
from fleetvl.engines import Engine, engine_factory
from fleetvl.protocol.request import ChatRequest, ImageRef
from fleetvl.sampling import SamplingParams
from router.backends import BackendRequest, Delta, EngineBackend, Final
from tests.helpers import png_bytes, random_image
from tests.redis_servers import RedisServer


def test_leaving_mid_stream_frees_the_engine_before_it_is_reused(fp32_bundle: Path) -> None:
    from edge_agent.engine import EdgeEngine

    engine = EdgeEngine(fp32_bundle)
    backend = EngineBackend("local", [engine])
    chat = ChatRequest(
        "r", "m",
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
        [ImageRef("d", png_bytes(random_image(56, 56)), 4)],
        SamplingParams(max_tokens=200, ignore_eos=True),
    )  # fmt: skip

    async def leave_after_one_token() -> None:
        gen = backend.generate(BackendRequest("r", chat))
        assert isinstance(await anext(gen), Delta)
        await gen.aclose()
        # Back in the pool: the engine's own lock is free (its thread has finished).
        got = backend._pool().get_nowait()
        assert got is engine
        assert engine._lock.acquire(blocking=False)
        engine._lock.release()

    asyncio.run(leave_after_one_token())


def _ask(backend: EngineBackend) -> Final:
    chat = ChatRequest(
        "q", "m",
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Gauge?"}]}],
        [ImageRef("d", png_bytes(random_image(56, 56, seed=3)), 4)],
        SamplingParams(max_tokens=6, ignore_eos=True),
    )  # fmt: skip

    async def run() -> list[Delta | Final]:
        return [ev async for ev in backend.generate(BackendRequest("q", chat))]

    events = asyncio.run(run())
    final = events[-1]
    assert isinstance(final, Final)
    assert [e.text for e in events[:-1] if isinstance(e, Delta)]
    assert final.completion_tokens == 6
    return final


@pytest.mark.parametrize("name", ["edge", "edge-cached", "cloud"])
def test_every_registered_engine_serves_behind_the_one_backend(
    name: str, fp32_bundle: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router config names an engine; the factory the installed package registers builds
    it, and the same in-process backend streams its answer (edge ONNX, edge + shared cache,
    cloud PyTorch)."""
    with RedisServer().start() as redis_server:
        monkeypatch.setenv("FLEETVL_REDIS_URL", redis_server.url)
        model_dir = tiny_checkpoint if name == "cloud" else fp32_bundle
        engine = engine_factory(name)(model_dir)
        assert isinstance(engine, Engine)
        try:
            final = _ask(EngineBackend(name, [engine]))
        finally:
            if isinstance(engine, CloudEngine):
                engine.close()
    assert final.finish_reason == "length"
    assert final.prompt_tokens > 4
    assert final.ttft_s > 0


def test_the_cached_engine_answers_a_repeat_from_the_shared_cache(
    fp32_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RedisServer().start() as redis_server:
        monkeypatch.setenv("FLEETVL_REDIS_URL", redis_server.url)
        engine = engine_factory("edge-cached")(fp32_bundle)
        assert isinstance(engine, CachedEngine)
        prompt = engine.encode([{"role": "user", "content": "Which row is empty?"}])
        params = SamplingParams(max_tokens=5, ignore_eos=True)
        first = engine.generate(prompt, params)
        assert first.extra["cache"]["response"] == "miss"  # type: ignore[index]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the store is written behind the answer
            again = engine.generate(prompt, params)
            if again.extra["cache"]["response"] == "hit":  # type: ignore[index]
                break
            time.sleep(0.05)
        assert again.extra["cache"]["response"] == "hit"  # type: ignore[index]
        assert again.token_ids == first.token_ids
