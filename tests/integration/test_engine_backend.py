"""The router's in-process engine backend: a caller that leaves mid-stream stops the engine,
and the engine goes back to the pool only once its thread has let go of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetvl.protocol.request import ChatRequest, ImageRef
from fleetvl.sampling import SamplingParams
from router.backends import BackendRequest, Delta, EngineBackend
from tests.helpers import png_bytes, random_image


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
