"""The site agent as separate processes against a real router process over real gRPC.

The cloud behind the router is its ``simulated`` backend (a fake model server, named as one):
what is under test is the agent's gate, early escalation, spool and forwarding, and the
router's idempotency record. The uplink runs through :class:`FakeWanLink` (a fake WAN link)
so the tests can cut it.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.edge_harness import FakeWanLink, Proc, metric, start_agent, start_router, wait_for
from tests.helpers import png_bytes, random_image

CLOUD_ANSWER = "cloud says hi"
SITE = "s1"


@pytest.fixture(scope="module")
def image_url() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(random_image(56, 56))).decode()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("router")
    backends = [
        {"name": "cloud", "type": "simulated", "slots": 32,
         "simulated": {"answer": CLOUD_ANSWER, "output_tokens": 3, "confidence": 0.97}},
        {"name": "site-agent", "type": "agent", "site": SITE, "slots": 2},
    ]  # fmt: skip
    proc, url, grpc_port = start_router(tmp, backends)
    yield url, grpc_port
    proc.stop()


def agent_config(bundle: Path, tmp: Path, link: FakeWanLink | None, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "site": SITE,
        "bundle": str(bundle),
        "model": "edge",
        "gate": {"signal": "mean_prob", "threshold_source": "raw"},
        "spool": {"path": str(tmp / "spool.sqlite"), "retry_backoff_s": 0.05,
                  "max_retry_backoff_s": 0.5},
    }  # fmt: skip
    if link is not None:
        cfg["router"] = {"target": f"127.0.0.1:{link.port}", "model": "cloud",
                         "backoff_s": 0.05, "max_backoff_s": 0.3, "cloud_rtt_ms": 50}  # fmt: skip
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and k in cfg else v
    return cfg


@pytest.fixture(scope="module")
def site(
    router: tuple[str, int], fp32_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, FakeWanLink]]:
    tmp = tmp_path_factory.mktemp("site")
    link = FakeWanLink(router[1])
    link.start()
    proc, url = start_agent(tmp, agent_config(fp32_bundle, tmp, link))
    wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "up", 30, "uplink up")
    yield url, link
    proc.stop()
    link.cut()


@contextlib.contextmanager
def linked_agent(router_port: int, bundle: Path, tmp: Path) -> Iterator[tuple[str, FakeWanLink]]:
    """An agent process whose uplink runs through a fake WAN link, once the uplink is up."""
    link = FakeWanLink(router_port)
    link.start()
    proc, url = start_agent(tmp, agent_config(bundle, tmp, link))
    try:
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "up", 30, "uplink")
        yield url, link
    finally:
        link.thaw()
        proc.stop()
        link.cut()


def ask(url: str, image_url: str, max_tokens: int = 16, **sla: Any) -> httpx.Response:
    body = {
        "model": "edge",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": "What does the gauge read?"}]}],
        "sla": sla,
    }  # fmt: skip
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def cloud_dispatches(router_url: str) -> float:
    return metric(router_url, "fleetvl_router_backend_requests_total", backend="cloud")


def test_gate_releases_at_the_threshold_and_escalates_just_above_it(
    site: tuple[str, FakeWanLink], router: tuple[str, int], image_url: str
) -> None:
    url, _ = site
    measured = ask(url, image_url, min_confidence=0.0).json()["fleetvl"]
    c = measured["confidence"]
    assert measured["served_by"] == "edge"
    assert measured["confidence_signal"] == "mean_prob"
    assert 0 < c < 1

    below = ask(url, image_url, min_confidence=c - 1e-6).json()
    assert below["fleetvl"]["served_by"] == "edge"
    assert below["fleetvl"]["threshold"] == pytest.approx(c - 1e-6)
    assert below["fleetvl"]["meets_min_confidence"] is True

    before = cloud_dispatches(router[0])
    above = ask(url, image_url, min_confidence=c + 1e-6).json()
    assert above["fleetvl"]["served_by"] == "cloud"
    assert above["fleetvl"]["escalation_reason"] == "low_confidence"
    gate = above["fleetvl"]["gate"]  # the edge's verdict travels with the cloud answer
    assert gate["signal"] == "mean_prob"
    assert gate["passed"] is False
    assert gate["threshold"] == pytest.approx(c + 1e-6)
    assert above["choices"][0]["message"]["content"].startswith("cloud")
    assert cloud_dispatches(router[0]) == before + 1


def test_early_escalation_stops_local_decoding(
    site: tuple[str, FakeWanLink], image_url: str
) -> None:
    url, _ = site
    r = ask(url, image_url, max_tokens=32, min_confidence=0.99).json()["fleetvl"]
    assert r["served_by"] == "cloud"
    # A random-weight model's first tokens are far below 0.99: no continuation can pass.
    assert r["local_max_tokens"] == 32
    assert 1 <= r["local_tokens"] < 32
    assert metric(url, "fleetvl_edge_early_escalations_total", reason="low_confidence") >= 1


def test_a_deadline_the_local_answer_cannot_make_escalates_early(
    site: tuple[str, FakeWanLink], image_url: str
) -> None:
    url, _ = site
    # How long this box takes for a 2,000-token local answer (the gate passes everything at
    # 0): then a deadline of 40% of that cannot be met locally, while the budget left after
    # the first tokens still covers the cloud round trip (50 ms), on an idle or a loaded box.
    full = ask(url, image_url, max_tokens=2000, min_confidence=0.0, deadline_ms=20_000,
               max_output_tokens=2000).json()["fleetvl"]  # fmt: skip
    assert full["served_by"] == "edge"
    assert full["local_tokens"] == 2000
    deadline_ms = max(200, round(0.4 * full["timings"]["local_ms"]))
    resp = ask(url, image_url, max_tokens=2000, min_confidence=0.0, deadline_ms=deadline_ms,
               max_output_tokens=2000)  # fmt: skip
    assert resp.status_code == 200, resp.text
    f = resp.json()["fleetvl"]
    assert f["served_by"] == "cloud", f
    assert f["escalation_reason"] == "deadline"
    assert f["local_tokens"] < 2000


def test_openai_client_streams_the_cloud_answer(
    site: tuple[str, FakeWanLink], image_url: str
) -> None:
    client = openai.OpenAI(base_url=site[0] + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": "read it"}]}]  # fmt: skip
    stream = client.chat.completions.create(
        model="edge", messages=msgs, max_tokens=8, stream=True,
        extra_body={"sla": {"min_confidence": 0.99}},
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("cloud")


def test_edge_only_never_reaches_cloud_dispatch(
    site: tuple[str, FakeWanLink], router: tuple[str, int], image_url: str
) -> None:
    url, _ = site
    before = cloud_dispatches(router[0])
    for _ in range(5):
        r = ask(url, image_url, min_confidence=0.99, residency="edge_only").json()["fleetvl"]
        assert r["served_by"] == "edge"
        assert r["low_confidence"] is True
        assert r["local_tokens"] == r["local_max_tokens"]  # nowhere to escalate: finished
    # Flow 4: an edge_only request entering the router goes down the agent's connection.
    client = openai.OpenAI(base_url=router[0] + "/v1", api_key="unused")
    resp = client.chat.completions.create(
        model="edge", max_tokens=4,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": "read it"}]}],
        extra_body={"site": SITE, "sla": {"residency": "edge_only"}},
    )  # fmt: skip
    assert resp.model_extra["fleetvl"]["backend"] == "site-agent"
    assert cloud_dispatches(router[0]) == before
    assert metric(router[0], "fleetvl_router_residency_violations_total") == 0


def _accept(url: str, image_url: str) -> str:
    r = ask(url, image_url, max_tokens=4, min_confidence=0.99, on_uplink_down="queue")
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/requests/{r.json()['id']}"
    return r.json()["id"]


def test_uplink_outage_with_agent_killed_answers_every_request_exactly_once(
    router: tuple[str, int], fp32_bundle: Path, tmp_path: Path, image_url: str
) -> None:
    link = FakeWanLink(router[1])
    link.start()
    cfg = agent_config(fp32_bundle, tmp_path, link)
    proc, url = start_agent(tmp_path, cfg)
    procs: list[Proc] = [proc]
    try:
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "up", 30, "uplink")
        before = cloud_dispatches(router[0])
        link.cut()
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "down", 30, "cut")
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda _i: _accept(url, image_url), range(100)))
            proc.kill()  # mid-outage, 100 accepted and unanswered
            proc, url = start_agent(tmp_path, {**cfg, "http_port": None}, "agent2")
            procs.append(proc)
            ids += list(pool.map(lambda _i: _accept(url, image_url), range(100)))
        assert len(set(ids)) == 200
        link.restore()

        def all_done() -> bool:
            states = [httpx.get(f"{url}/v1/requests/{i}").json()["status"] for i in ids]
            return all(s == "completed" for s in states)

        wait_for(all_done, 90, "200 spooled answers")
        for i in ids:
            body = httpx.get(f"{url}/v1/requests/{i}").json()
            assert body["response"]["choices"][0]["message"]["content"].startswith("cloud")
            assert body["response"]["fleetvl"]["served_by"] == "cloud"
        assert cloud_dispatches(router[0]) == before + 200  # none lost, none twice
    finally:
        for p in procs:
            p.stop()
        link.cut()


def test_spool_over_quota_refuses_new_waits_and_keeps_accepted_ones(
    router: tuple[str, int], fp32_bundle: Path, tmp_path: Path, image_url: str
) -> None:
    link = FakeWanLink(router[1])
    link.start()
    payload = len(base64.b64decode(image_url.split(",", 1)[1]))
    cfg = agent_config(fp32_bundle, tmp_path, link, spool={"max_bytes": 3 * payload + 1500})
    proc, url = start_agent(tmp_path, cfg)
    try:
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "up", 30, "uplink")
        link.cut()
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "down", 30, "cut")
        accepted = [_accept(url, image_url) for _ in range(3)]
        refused = ask(url, image_url, max_tokens=4, min_confidence=0.99, on_uplink_down="queue")
        assert refused.status_code == 507
        err = refused.json()["error"]
        assert err["type"] == "spool_full"
        assert "spool is full" in err["message"]
        for i in accepted:
            assert httpx.get(f"{url}/v1/requests/{i}").json()["status"] == "pending"
        link.restore()
        wait_for(
            lambda: all(
                httpx.get(f"{url}/v1/requests/{i}").json()["status"] == "completed"
                for i in accepted
            ),
            30,
            "accepted answers",
        )
    finally:
        proc.stop()
        link.cut()


def test_uplink_down_policies(
    router: tuple[str, int], fp32_bundle: Path, tmp_path: Path, image_url: str
) -> None:
    with linked_agent(router[1], fp32_bundle, tmp_path) as (url, link):
        link.cut()
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "down", 30, "cut")
        local = ask(url, image_url, min_confidence=0.99, on_uplink_down="answer_local")
        assert local.status_code == 200
        assert local.json()["fleetvl"]["low_confidence"] is True
        fail = ask(url, image_url, min_confidence=0.99, on_uplink_down="fail")
        assert fail.status_code == 503
        assert fail.json()["error"]["type"] == "uplink_down"
        assert int(fail.headers["retry-after"]) >= 1
        bad = ask(url, image_url, min_confidence=2.0)
        assert bad.status_code == 422
        assert httpx.get(f"{url}/v1/requests/nope").status_code == 404


def test_bad_input_gets_a_status_and_a_reason(
    site: tuple[str, FakeWanLink], image_url: str
) -> None:
    url, _ = site
    cases = [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "not served"),
        ({"model": "edge", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
         400, "data:image"),
        ({"model": "edge", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]},
         400, "image"),
        ({"model": "edge", "messages": []}, 422, "messages"),
        ({"model": "edge", "messages": [{"role": "user", "content": "hi"}],
          "sla": {"residency": "somewhere"}}, 422, "residency"),
    ]  # fmt: skip
    for body, status, words in cases:
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        assert words in r.text
        assert "Traceback" not in r.text
    big = httpx.post(url + "/v1/chat/completions", content=b"x" * (21 << 20),
                     headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
    assert big.status_code == 413
    hi = {"model": "edge", "messages": [{"role": "user", "content": "hi"}]}
    hook = httpx.post(
        url + "/v1/chat/completions", headers={"x-fleetvl-webhook": "http://x"}, json=hi
    )
    assert hook.status_code == 400
    assert "allow_webhooks" in hook.text
    assert httpx.get(url + "/healthz").status_code == 200  # still serving


def test_agent_killed_mid_delivery_still_answers_each_request_once(
    fp32_bundle: Path, tmp_path: Path, image_url: str
) -> None:
    """SIGKILL while spooled answers are in flight: the restarted agent replays them with
    their idempotency keys and the router serves the recorded runs (no second dispatch)."""
    backends = [{"name": "cloud", "type": "simulated", "slots": 4,
                 "simulated": {"answer": CLOUD_ANSWER, "ttft_s": 0.3}},
                {"name": "site-agent", "type": "agent", "site": SITE}]  # fmt: skip
    rproc, rurl, rgrpc = start_router(tmp_path, backends)
    link = FakeWanLink(rgrpc)
    link.start()
    cfg = agent_config(fp32_bundle, tmp_path, link, spool={"concurrency": 4})
    proc, url = start_agent(tmp_path, cfg)
    procs = [proc]
    try:
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "up", 30, "uplink")
        link.cut()
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "down", 30, "cut")
        ids = [_accept(url, image_url) for _ in range(12)]
        link.restore()
        wait_for(lambda: cloud_dispatches(rurl) >= 2, 30, "deliveries in flight")
        proc.kill()
        proc, url = start_agent(tmp_path, {**cfg, "http_port": None}, "agent2")
        procs.append(proc)

        def done() -> bool:
            return all(
                httpx.get(f"{url}/v1/requests/{i}").json()["status"] == "completed" for i in ids
            )

        wait_for(done, 60, "every spooled answer")
        assert cloud_dispatches(rurl) == len(ids)
        assert metric(rurl, "fleetvl_router_idempotent_replays_total") >= 1
    finally:
        for p in procs:
            p.stop()
        link.cut()
        rproc.stop()


def test_an_agent_with_a_redis_reuses_a_shared_instructions_kv(
    fp32_bundle: Path, tmp_path: Path
) -> None:
    """With `redis_url`, the box's engines run behind the cache: a second question after the
    same long instruction takes that prefix's KV from Redis instead of recomputing it."""
    from tests.redis_servers import RedisServer

    with RedisServer() as redis_server:
        cfg = agent_config(fp32_bundle, tmp_path, None, redis_url=redis_server.url,
                           policies={"global": {"residency": "edge_only"}})  # fmt: skip
        proc, url = start_agent(tmp_path, cfg)
        try:
            system = "Inspection procedure: " + "check the needle against the band. " * 40

            def ask(question: str) -> dict[str, Any]:
                body = {"model": "edge", "max_tokens": 4, "messages": [
                    {"role": "system", "content": system}, {"role": "user", "content": question}]}
                r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
                assert r.status_code == 200, r.text
                return r.json()

            ask("What does the gauge read?")
            before = metric(url, "fleetvl_cache_hit_tokens_total", kind="kv")
            wait_for(lambda: ask("Is the oil level low?") and
                     metric(url, "fleetvl_cache_hit_tokens_total", kind="kv") > before,
                     10, "a prefix hit")  # fmt: skip
            assert metric(url, "fleetvl_cache_hit_tokens_total", kind="kv") - before >= 64
        finally:
            proc.stop()


def test_an_edge_only_request_never_writes_to_a_redis_beyond_the_site(
    fp32_bundle: Path, tmp_path: Path
) -> None:
    """With a shared (not site-local) Redis, the agent's edge_only requests leave nothing in it:
    the KV of a site's image must not leave the site."""
    import redis as redis_client

    from tests.redis_servers import RedisServer

    with RedisServer() as redis_server:
        cfg = agent_config(fp32_bundle, tmp_path, None, redis_url=redis_server.url,
                           redis_site_local=False,
                           policies={"global": {"residency": "edge_only"}})  # fmt: skip
        proc, url = start_agent(tmp_path, cfg)
        try:
            body = {"model": "edge", "max_tokens": 4, "messages": [
                {"role": "system", "content": "Procedure: " + "check the band. " * 60},
                {"role": "user", "content": "What does the gauge read?"}]}  # fmt: skip
            for _ in range(2):
                r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
                assert r.status_code == 200, r.text
            time.sleep(0.5)  # writes would be behind the answer
            assert redis_client.Redis.from_url(redis_server.url).dbsize() == 0
        finally:
            proc.stop()


def test_answer_local_answers_when_the_router_hangs(
    router: tuple[str, int], fp32_bundle: Path, tmp_path: Path, image_url: str
) -> None:
    """A router that hangs (connections open, nothing comes back) uses up the escalation's
    time; a request whose policy says answer_local still gets the local answer, flagged,
    not a 503 blaming the local engines."""
    with linked_agent(router[1], fp32_bundle, tmp_path) as (url, link):
        link.freeze()
        r = ask(url, image_url, min_confidence=0.99, on_uplink_down="answer_local",
                deadline_ms=3000)  # fmt: skip
        assert r.status_code == 200, r.text
        fv = r.json()["fleetvl"]
        assert fv["served_by"] == "edge"
        assert fv["low_confidence"] is True
        assert "uplink_down" in fv["escalation_reason"]


def test_a_hung_router_is_noticed_in_seconds(
    router: tuple[str, int], fp32_bundle: Path, tmp_path: Path, image_url: str
) -> None:
    """Keepalive pings on the uplink: a router that stops answering (connections open, no
    bytes back) is reported down within seconds, and a request that would escalate is queued
    at once instead of after its whole deadline."""
    with linked_agent(router[1], fp32_bundle, tmp_path) as (url, link):
        link.freeze()
        t0 = time.monotonic()
        wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "down", 8, "noticed")
        assert time.monotonic() - t0 < 8
        t1 = time.monotonic()
        r = ask(url, image_url, min_confidence=0.99, on_uplink_down="queue", deadline_ms=8000)
        assert r.status_code == 202, r.text
        assert time.monotonic() - t1 < 3  # not the 8 s deadline


def test_an_agent_stops_asking_a_router_that_keeps_no_answers(
    site: tuple[str, FakeWanLink], image_url: str
) -> None:
    """The router here has no answer cache: it says so to the first probe, and the agent
    stops probing (no extra round trip beside every local answer)."""
    url, _ = site
    probes = lambda: metric(url, "fleetvl_edge_cache_probes_total")  # noqa: E731
    before = probes()
    for _ in range(4):
        assert ask(url, image_url, min_confidence=0.0).status_code == 200
    assert probes() - before <= 1
