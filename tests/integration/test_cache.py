"""The shared cache against real Redis: warm runs match cold runs, namespaces never mix,
damaged entries are rejected and counted, and a Redis outage never costs an answer."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from edge_agent.engine.cached import CachedEngine
from edge_agent.engine.engine import EdgeEngine
from fleetvl.cache import CacheConfig, FleetCache, blob_digest
from fleetvl.sampling import SamplingParams
from tests.helpers import png_bytes, random_image
from tests.redis_servers import RedisServer

LOCAL = "redis://127.0.0.1:6379/0"
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def engine(fp32_bundle: Path) -> EdgeEngine:
    return EdgeEngine(fp32_bundle)


@pytest.fixture
def tenant() -> str:
    # A fresh tenant per test isolates it from every other entry in the shared local Redis.
    return "test-" + secrets.token_hex(6)


def _cache(**kw: object) -> FleetCache:
    # The tiny model prefills faster than any fetch, so "auto" would (rightly) never fetch:
    # tests of the hit path pin the policy; the choice itself is tested on its own.
    kw.setdefault("fetch_policy", "always")
    return FleetCache(CacheConfig(url=LOCAL, block_size=16, **kw))  # type: ignore[arg-type]


@pytest.fixture
def fp16_cache() -> Iterator[FleetCache]:
    c = _cache(kv_format="fp16")
    yield c
    c.close()


def _prompts(engine: EdgeEngine, n: int) -> list:
    """Shared system prompt, 0-2 images of different sizes, varied questions."""
    system = {"role": "system", "content": "You inspect substations. Answer briefly."}
    out = []
    for i in range(n):
        images = [
            png_bytes(random_image(84 + 28 * ((i + j) % 4), 112, seed=j)) for j in range(i % 3)
        ]
        content = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": f"Question {i}: what does gauge {i % 5} read?"})
        out.append(engine.encode([system, {"role": "user", "content": content}], images))
    return out


def test_warm_cache_gives_token_identical_output(
    engine: EdgeEngine, fp16_cache: FleetCache, tenant: str
) -> None:
    exact = _cache(kv_format="fp32")
    try:
        for cache in (exact, fp16_cache):
            ce = CachedEngine(engine, cache, tenant=tenant + cache.config.kv_format)
            for prompt in _prompts(engine, 6):
                cold = engine.generate(prompt, GREEDY)
                first = ce.generate(prompt, GREEDY, use="read_write")
                cache.flush()
                # The second run must use the KV blocks (no response cache: sampling seeded
                # differently would still be deterministic, so read the KV path directly).
                warm = ce.generate(prompt, replace(GREEDY, max_tokens=11), use="read_write")
                assert first.token_ids == cold.token_ids
                assert warm.token_ids == cold.token_ids[:11], cache.config.kv_format
                report = warm.extra["cache"]
                full = (len(prompt) - 1) // 16 * 16
                assert report["kv_hit_tokens"] == full
                assert warm.timings.cached_tokens == full
    finally:
        exact.close()


def test_vision_embeddings_are_reused(
    engine: EdgeEngine, fp16_cache: FleetCache, tenant: str
) -> None:
    ce = CachedEngine(engine, fp16_cache, tenant=tenant)
    img = png_bytes(random_image(140, 168, seed=7))
    first = engine.encode(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "A?"}]}], [img]
    )
    second = engine.encode(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Other first."},
                    {"type": "image"},
                    {"type": "text", "text": "B?"},
                ],
            }
        ],
        [img],
    )
    ce.generate(first, GREEDY)
    fp16_cache.flush()
    warm = ce.generate(second, GREEDY)
    assert warm.extra["cache"]["vision_hits"] == [0]
    assert warm.timings.vision_tokens == 0
    assert warm.token_ids == engine.generate(second, GREEDY).token_ids


def test_int8_kv_agreement_on_the_tiny_set(engine: EdgeEngine, tenant: str) -> None:
    """INT8 KV is lossy: report the agreement, assert it above a floor.

    The floor: a greedy run that diverges at token t keeps the t tokens before it, and the
    tiny random model's top-2 margins are small, so we require most prompts identical and
    the mean common prefix above 80% (measured: reported by the assertion message).
    """
    cache = _cache(kv_format="int8")
    try:
        ce = CachedEngine(engine, cache, tenant=tenant)
        same = 0
        prefix_share = []
        prompts = _prompts(engine, 10)
        for prompt in prompts:
            cold = engine.generate(prompt, GREEDY)
            ce.generate(prompt, GREEDY, use="read_write")
            cache.flush()
            warm = ce.generate(prompt, replace(GREEDY, max_tokens=12, top_k=1), use="read")
            assert warm.extra["cache"]["kv_hit_tokens"] > 0
            same += warm.token_ids == cold.token_ids
            common = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(warm.token_ids, cold.token_ids, strict=True))
                    if a != b
                ),
                len(cold.token_ids),
            )
            prefix_share.append(common / len(cold.token_ids))
        share = float(np.mean(prefix_share))
        msg = f"int8 KV: {same}/{len(prompts)} identical, mean common prefix {share:.2f}"
        print(msg)
        assert same >= 0.7 * len(prompts), msg
        assert share >= 0.8, msg
    finally:
        cache.close()


def test_two_bundles_never_read_each_others_entries(
    engine: EdgeEngine,
    bundle_factory,
    fp16_cache: FleetCache,
    tenant: str,  # noqa: ANN001
) -> None:
    other = EdgeEngine(bundle_factory("qwen2_5_vl", "int8"))
    assert other.digest != engine.digest
    a = CachedEngine(engine, fp16_cache, tenant=tenant)
    b = CachedEngine(other, fp16_cache, tenant=tenant)
    prompt = _prompts(engine, 3)[2]
    a.generate(prompt, GREEDY)
    fp16_cache.flush()
    assert a.generate(prompt, replace(GREEDY, max_tokens=5)).extra["cache"]["kv_hit_tokens"] > 0
    res = b.generate(prompt, GREEDY)
    rep = res.extra["cache"]
    assert rep["kv_hit_tokens"] == 0
    assert rep["kv_stored_tokens"] == 0
    assert rep["vision_hits"] == []
    assert rep["response"] == "miss"
    # Tenant isolation works the same way within one model.
    c = CachedEngine(engine, fp16_cache, tenant=tenant + "-other")
    assert c.generate(prompt, GREEDY).extra["cache"]["kv_stored_tokens"] == 0


def test_corrupted_entries_are_rejected_counted_and_recomputed(
    engine: EdgeEngine, fp16_cache: FleetCache, tenant: str
) -> None:
    ce = CachedEngine(engine, fp16_cache, tenant=tenant)
    prompt = _prompts(engine, 3)[1]
    cold = ce.generate(prompt, GREEDY)
    fp16_cache.flush()
    r = redis.Redis.from_url(LOCAL)
    ns = ce.model.namespace.prefix
    kv_keys = sorted(r.scan_iter(f"{ns}:kv:*"))
    resp_keys = list(r.scan_iter(f"{ns}:resp:*"))
    assert kv_keys
    assert resp_keys
    for key in kv_keys:  # flip a body byte of every block: the chain breaks at the first
        r.setrange(key, r.strlen(key) - 3, b"\xff")
    r.set(resp_keys[0], b"\x80\x04\x95" + b"pickled payload, not a cache value" * 8)
    before_kv = _metric("fleetvl_cache_rejected_total", kind="kv", reason="checksum")
    before_resp = _metric("fleetvl_cache_rejected_total", kind="response", reason="bad_magic")
    again = ce.generate(prompt, GREEDY, use="read")
    assert again.token_ids == cold.token_ids
    assert again.extra["cache"]["response"] == "miss"
    assert again.extra["cache"]["kv_hit_tokens"] == 0
    rejected = _metric("fleetvl_cache_rejected_total", kind="response", reason="bad_magic")
    assert rejected == before_resp + 1
    assert _metric("fleetvl_cache_rejected_total", kind="kv", reason="checksum") == before_kv + 1
    # Rejected entries are deleted so that the next request rewrites them.
    assert len(list(r.scan_iter(f"{ns}:kv:*"))) == len(kv_keys) - len(ce.model.prefix.parts)
    assert not r.exists(resp_keys[0])


def test_response_cache_serves_repeated_greedy_requests_only(
    engine: EdgeEngine, fp16_cache: FleetCache, tenant: str
) -> None:
    ce = CachedEngine(engine, fp16_cache, tenant=tenant)
    prompt = _prompts(engine, 2)[1]
    first = ce.generate(prompt, GREEDY)
    fp16_cache.flush()
    gen = ce.stream(prompt, GREEDY)
    events = list(gen)
    assert gen.result is not None
    assert gen.result.extra["cache"]["response"] == "hit"
    assert gen.result.token_ids == first.token_ids
    assert "".join(e.text for e in events) == first.text == gen.result.text
    assert gen.result.confidence.mean_logprob == pytest.approx(first.confidence.mean_logprob)
    sampled = SamplingParams(max_tokens=6, temperature=0.8)
    ce.generate(prompt, sampled)
    fp16_cache.flush()
    assert "response" not in ce.generate(prompt, sampled).extra["cache"]


def test_fetch_or_recompute_choice_is_measured_and_visible(
    engine: EdgeEngine, fp16_cache: FleetCache, tenant: str
) -> None:
    cache = _cache(fetch_policy="auto")
    ce = CachedEngine(engine, cache, tenant=tenant)
    prompt = _prompts(engine, 2)[1]
    ce.generate(prompt, GREEDY)
    cache.flush()
    # Pretend this box prefills for free and the link is slow: a hit must not be fetched.
    ce.model.cost.prefill_s_per_token.value = 1e-9
    ce.model.cost.fetch_s_per_byte.value = 1e-3
    before = _metric("fleetvl_cache_decisions_total", kind="kv", choice="recompute")
    res = ce.generate(prompt, replace(GREEDY, max_tokens=4), use="read")
    assert res.extra["cache"]["kv_decision"]["choice"] == "recompute"
    assert res.extra["cache"]["kv_hit_tokens"] == 0
    assert _metric("fleetvl_cache_decisions_total", kind="kv", choice="recompute") == before + 1
    # And the other way round: slow prefill, fast link.
    ce.model.cost.prefill_s_per_token.value = 1.0
    ce.model.cost.fetch_s_per_byte.value = 1e-12
    res = ce.generate(prompt, replace(GREEDY, max_tokens=4), use="read")
    assert res.extra["cache"]["kv_decision"]["choice"] == "fetch"
    assert res.extra["cache"]["kv_hit_tokens"] > 0
    cache.close()


def test_image_blobs_by_digest(fp16_cache: FleetCache, tenant: str) -> None:
    blobs = fp16_cache.images(tenant=tenant)
    small = png_bytes(random_image(64, 64, seed=3))
    big = secrets.token_bytes(3 * (1 << 20) + 17)  # over max_value_bytes: stored in parts
    assert blobs.get(blob_digest(small)) is None
    assert blobs.get(blob_digest(big)) is None
    assert blobs.put(small) == blob_digest(small)
    assert blobs.put(big) == blob_digest(big)
    assert blobs.get(blob_digest(big)) == big
    assert blobs.get(blob_digest(small)) == small
    assert fp16_cache.images(tenant=tenant + "x").get(blob_digest(small)) is None
    # Bytes stored under another digest are refused: a blob is checked against its key.
    other = blob_digest(b"other")
    r = redis.Redis.from_url(LOCAL)
    key = f"fleetvl:cache:1:img:{blobs_prefix(blobs)}:{blob_digest(small)}:0"
    r.copy(key, key.replace(blob_digest(small), other))
    assert blobs.get(other) is None


def blobs_prefix(blobs) -> str:  # noqa: ANN001
    from fleetvl.cache.keys import image_key

    return image_key("0" * 64, 0, blobs.tenant).split(":img:")[1].rsplit(":", 2)[0]


def test_redis_outage_costs_no_answer_and_the_cache_recovers(engine: EdgeEngine) -> None:
    server = RedisServer().start()
    cache = FleetCache(
        CacheConfig(
            url=server.url, block_size=16, op_timeout_s=0.2, backoff_s=0.2, max_backoff_s=0.4
        )
    )
    try:
        ce = CachedEngine(engine, cache)
        prompts = _prompts(engine, 4)
        expected = [engine.generate(p, GREEDY).token_ids for p in prompts]
        assert ce.generate(prompts[0], GREEDY).token_ids == expected[0]
        cache.flush()
        errors = _metric("fleetvl_cache_errors_total", op="strlen") + _metric(
            "fleetvl_cache_errors_total", op="mget"
        )
        server.stop()  # dead mid-run
        for p, want in zip(prompts, expected, strict=True):
            t0 = time.perf_counter()
            res = ce.generate(p, GREEDY)
            assert res.token_ids == want
            assert res.extra["cache"]["kv_hit_tokens"] == 0
            assert time.perf_counter() - t0 < 5
        after = _metric("fleetvl_cache_errors_total", op="strlen") + _metric(
            "fleetvl_cache_errors_total", op="mget"
        )
        assert after > errors
        assert _metric("fleetvl_cache_available") == 0
        server.start()  # back, empty (no persistence)
        deadline = time.monotonic() + 10
        while True:
            ce.generate(prompts[1], GREEDY)
            cache.flush()
            res = ce.generate(prompts[1], replace(GREEDY, max_tokens=5))
            if res.extra["cache"]["kv_hit_tokens"] > 0:
                break
            assert time.monotonic() < deadline, "cache did not recover"
            time.sleep(0.2)
        assert res.token_ids == expected[1][:5]
        assert _metric("fleetvl_cache_available") == 1
    finally:
        cache.close()
        server.stop()


def test_a_hung_redis_is_bounded_by_the_timeout(engine: EdgeEngine) -> None:
    server = RedisServer().start()
    cache = FleetCache(
        CacheConfig(url=server.url, block_size=16, op_timeout_s=0.2, fetch_policy="always")
    )
    try:
        ce = CachedEngine(engine, cache)
        prompt = _prompts(engine, 2)[1]
        want = engine.generate(prompt, GREEDY)
        ce.generate(prompt, GREEDY)
        cache.flush()
        server.pause()  # accepts connections, answers nothing
        t0 = time.perf_counter()
        res = ce.generate(prompt, GREEDY)
        took = time.perf_counter() - t0
        assert res.token_ids == want.token_ids
        assert took < want.timings.ttft_s + want.timings.decode_s + 2.0
    finally:
        server.resume()
        cache.close()
        server.stop()


def test_password_in_the_url_and_a_wrong_one(engine: EdgeEngine) -> None:
    server = RedisServer(None, "--requirepass", "s3cret").start_with_password("s3cret")
    try:
        good = FleetCache(CacheConfig(url=f"redis://:s3cret@127.0.0.1:{server.port}/0"))
        blob = png_bytes(random_image(32, 32, seed=9))
        assert good.images().put(blob) == blob_digest(blob)
        assert good.images().get(blob_digest(blob)) == blob
        good.close()
        # A wrong password is an unavailable cache: counted, and requests still answered.
        bad = FleetCache(
            CacheConfig(url=f"redis://:wrong@127.0.0.1:{server.port}/0", block_size=16)
        )
        before = _metric("fleetvl_cache_errors_total", op="mget")
        prompt = _prompts(engine, 2)[1]
        res = CachedEngine(engine, bad).generate(prompt, GREEDY)
        assert res.token_ids == engine.generate(prompt, GREEDY).token_ids
        # The first call (the response lookup) fails; the rest are skipped while backing off.
        assert _metric("fleetvl_cache_errors_total", op="mget") == before + 1
        assert _metric("fleetvl_cache_available") == 0
        bad.close()
    finally:
        server.stop()
