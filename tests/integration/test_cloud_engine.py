"""The cloud engine on CPU with the tiny checkpoint: continuous batching gives exactly what
transformers' own sequential generate() gives, in fewer decode steps; cancellation frees the
slot; stops and limits behave."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_worker.engine import CloudEngine, CloudResult, EngineConfig, TokenEvent
from fleetvl.errors import PromptError
from fleetvl.sampling import CancelToken, SamplingParams
from tests.helpers import hf_inputs, png_bytes, random_image

NEW = 10


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> Iterator[CloudEngine]:
    eng = CloudEngine(tiny_checkpoint, EngineConfig(max_slots=4, max_context=512))
    yield eng
    eng.close()


def _prompts(engine: CloudEngine, n: int) -> list:
    out = []
    for i in range(n):
        images = [png_bytes(random_image(84 + 28 * (i % 3), 112 + 14 * i, seed=i))
                  for _ in range(i % 3)]  # fmt: skip
        content = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": f"Question {i} about gauge {i}. " * (1 + i % 4)})
        out.append(engine.encode([{"role": "user", "content": content}], images))
    return out


def _reference(engine: CloudEngine, prompt) -> list[int]:  # noqa: ANN001
    kw = hf_inputs(prompt, engine.lm.image_token_id)
    out = engine.lm.model.generate(**kw, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    return out[0, len(prompt) :].tolist()


def test_batched_equals_sequential_generate_with_staggered_joins(engine: CloudEngine) -> None:
    prompts = _prompts(engine, 7)  # more than the 4 slots: some wait, all join mid-flight
    refs = [_reference(engine, p) for p in prompts]
    results: list[CloudResult | None] = [None] * len(prompts)

    def run(i: int) -> None:
        time.sleep(0.004 * i)
        results[i] = engine.generate(prompts[i], SamplingParams(max_tokens=NEW, ignore_eos=True))

    steps0 = engine.decode_steps
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(results):
        assert r is not None
        assert r.token_ids == refs[i], f"request {i}"
        assert r.finish_reason == "length"
    # Sequentially these need 7 x 9 decode steps; batched, far fewer.
    used = engine.decode_steps - steps0
    assert used < len(prompts) * (NEW - 1) * 0.7, used
    # Requests already running kept decoding while later ones were prefilled.
    assert engine.timings["interleaved_steps"] > 0


def test_streams_tokens_with_confidence(engine: CloudEngine) -> None:
    prompt = _prompts(engine, 2)[1]
    events = list(engine.submit(prompt, SamplingParams(max_tokens=6, ignore_eos=True)))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    result = events[-1]
    assert isinstance(result, CloudResult)
    assert [e.token_id for e in tokens] == result.token_ids
    assert "".join(e.text for e in tokens) == result.text or result.text.endswith("\ufffd")
    assert all(0 < e.confidence.prob <= 1 and e.confidence.entropy >= 0 for e in tokens)
    assert result.confidence.num_tokens == 6


def test_cancel_mid_stream_frees_the_slot(engine: CloudEngine) -> None:
    prompt = _prompts(engine, 1)[0]
    cancel = CancelToken()
    gen = engine.submit(prompt, SamplingParams(max_tokens=200, ignore_eos=True), cancel=cancel)
    got = 0
    for ev in gen:
        if isinstance(ev, TokenEvent):
            got += 1
            if got == 3:
                cancel.cancel()
        else:
            assert ev.finish_reason == "cancelled"
            assert len(ev.token_ids) < 10
    deadline = time.monotonic() + 5
    while engine.running:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_caller_that_stops_reading_frees_the_slot(engine: CloudEngine) -> None:
    gen = engine.submit(_prompts(engine, 1)[0], SamplingParams(max_tokens=300, ignore_eos=True))
    next(iter(gen))
    gen.close()  # e.g. the client disconnected
    deadline = time.monotonic() + 5
    while engine.running:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_deadline_and_context_limits(engine: CloudEngine) -> None:
    prompt = _prompts(engine, 1)[0]
    r = engine.generate(
        prompt, SamplingParams(max_tokens=400, ignore_eos=True), deadline=time.monotonic() + 0.05
    )
    assert r.finish_reason == "deadline"
    with pytest.raises(PromptError, match="exceeds the engine's context"):
        engine.submit(prompt, SamplingParams(max_tokens=10_000))


def test_vision_embeddings_come_from_the_shared_cache(tiny_checkpoint: Path) -> None:
    import secrets

    from fleetvl.cache import CacheConfig, FleetCache

    cache = FleetCache(CacheConfig(url="redis://127.0.0.1:6379/0"))
    eng = CloudEngine(tiny_checkpoint, EngineConfig(max_slots=2, max_context=512), cache=cache)
    try:
        # A fresh image (random seed) so that no earlier run stored it.
        image = png_bytes(random_image(112, 140, seed=secrets.randbelow(1 << 30)))
        ask = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
        params = SamplingParams(max_tokens=NEW, ignore_eos=True)
        cold = eng.generate(eng.encode(ask, [image]), params)
        cache.flush()
        warm = eng.generate(eng.encode(ask, [image]), params)
        assert cold.vision_cache_hits == 0
        assert warm.vision_cache_hits == 1
        assert warm.token_ids == cold.token_ids
    finally:
        eng.close()
        cache.close()


def test_sampled_and_greedy_requests_share_a_batch(engine: CloudEngine) -> None:
    """A sampled request makes its steps synchronous (the host picks its token); greedy
    requests beside it keep their exact outputs, and the seeded sample is reproducible."""
    prompts = _prompts(engine, 4)
    refs = [_reference(engine, p) for p in prompts[:3]]
    sampled = SamplingParams(max_tokens=NEW, temperature=0.9, top_p=0.95, seed=11,
                             ignore_eos=True)  # fmt: skip
    alone = engine.generate(prompts[3], sampled)
    results: list[CloudResult | None] = [None] * 4

    def run(i: int) -> None:
        time.sleep(0.003 * i)
        params = sampled if i == 3 else SamplingParams(max_tokens=NEW, ignore_eos=True)
        results[i] = engine.generate(prompts[i], params)

    threads = [threading.Thread(target=run, args=(i,)) for i in (3, 0, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [r.token_ids if r is not None else None for r in results]
    assert got[:3] == refs
    assert got[3] == alone.token_ids
    assert len(set(alone.token_ids)) > 1  # really sampled across the vocabulary


def test_a_request_that_cannot_make_its_deadline_gives_its_slot_away(engine: CloudEngine) -> None:
    """Slots go only to requests the engine's measured speed says can finish in time; one that
    cannot ends at once with finish_reason "deadline" (nothing prefilled), not late."""
    prompt = _prompts(engine, 1)[0]
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    engine.generate(prompt, params)  # what a request costs, learned
    per_token = engine.admission.token_s
    assert per_token > 0
    dropped = engine.admission.dropped
    late = engine.generate(prompt, params, deadline=time.monotonic() + per_token * 3)
    assert late.finish_reason == "deadline"
    assert late.token_ids == []
    assert engine.admission.dropped == dropped + 1
    fine = engine.generate(prompt, params, deadline=time.monotonic() + 60)
    assert fine.finish_reason == "length"
    assert len(fine.token_ids) == 20
