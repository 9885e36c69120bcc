"""Idempotency keys on the router's Generate: a replay is answered, never dispatched again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import pytest

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from tests.edge_harness import metric
from tests.redis_servers import free_port
from tests.router_harness import RunningRouter


@pytest.fixture(scope="module")
def router() -> Iterator[RunningRouter]:
    cfg = {
        "backends": [
            {
                "name": "cloud",
                "type": "simulated",
                "slots": 8,
                "simulated": {"answer": "ok", "output_tokens": 2, "ttft_s": 0.05},
            }
        ]
    }
    with RunningRouter(cfg) as r:  # fmt: skip
        yield r


def _request(key: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=key, tenant="t-idem", model="m", idempotency_key=key,
        messages=[pb.Message(role="user", content=[pb.ContentPart(text="hello")])],
        sampling=pb.Sampling(max_tokens=2),
    )  # fmt: skip


async def _finals(target: str, reqs: list[pb.GenerateRequest]) -> list[pb.Final]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.RouterStub(ch)

        async def one(r: pb.GenerateRequest) -> pb.Final:
            out = [c.final async for c in stub.Generate(r, timeout=10) if c.HasField("final")]
            return out[-1]

        return list(await asyncio.gather(*(one(r) for r in reqs)))


def test_a_replayed_key_is_answered_without_a_second_dispatch(router: RunningRouter) -> None:
    served = router.backends["cloud"].served
    n0 = len(served)
    first, = asyncio.run(_finals(router.grpc_target, [_request("k-1")]))  # fmt: skip
    again, = asyncio.run(_finals(router.grpc_target, [_request("k-1")]))  # fmt: skip
    assert not first.replayed
    assert again.replayed
    assert again.text == first.text
    assert len(served) == n0 + 1


def test_concurrent_requests_with_one_key_run_once(router: RunningRouter) -> None:
    served = router.backends["cloud"].served
    n0 = len(served)
    finals = asyncio.run(_finals(router.grpc_target, [_request("k-2")] * 3 + [_request("k-3")]))
    assert sum(f.replayed for f in finals) == 2
    assert len(served) == n0 + 2  # k-2 once, k-3 once


def test_a_caller_gone_mid_answer_does_not_cost_a_second_run(router: RunningRouter) -> None:
    """An agent killed while delivering: its call is cut; the replay gets the same run."""
    served = router.backends["cloud"].served
    n0 = len(served)

    async def cut_then_replay() -> pb.Final:
        async with grpc.aio.insecure_channel(router.grpc_target) as ch:
            call = pb_grpc.RouterStub(ch).Generate(_request("k-4"), timeout=10)
            await asyncio.sleep(0.02)  # dispatched, not answered (the backend takes 50 ms)
            call.cancel()
        return (await _finals(router.grpc_target, [_request("k-4")]))[0]

    final = asyncio.run(cut_then_replay())
    assert final.replayed
    assert final.text
    assert len(served) == n0 + 1


def _router_with_redis(url: str) -> RunningRouter:
    return RunningRouter({
        "redis_url": url,
        "backends": [{"name": "cloud", "type": "simulated", "slots": 8,
                      "simulated": {"answer": "ok", "output_tokens": 2, "ttft_s": 0.01}}],
    })  # fmt: skip


def test_a_restarted_router_answers_a_replay_from_redis() -> None:
    """Spool replays that reach a router restarted after answering are not run again."""
    key = f"k-restart-{uuid.uuid4().hex}"
    with _router_with_redis("redis://127.0.0.1:6379/0") as first_router:
        first, = asyncio.run(_finals(first_router.grpc_target, [_request(key)]))  # fmt: skip
        assert not first.replayed
        assert len(first_router.backends["cloud"].served) == 1
    with _router_with_redis("redis://127.0.0.1:6379/0") as second_router:
        again, = asyncio.run(_finals(second_router.grpc_target, [_request(key)]))  # fmt: skip
        assert again.replayed
        assert again.text == first.text
        assert second_router.backends["cloud"].served == []  # answered from the record


def test_a_redis_outage_never_fails_a_keyed_request() -> None:
    """A record that cannot be read or written (Redis down) is counted and the request runs:
    at-least-once across restarts then, never an error."""
    with _router_with_redis(f"redis://127.0.0.1:{free_port()}/0") as r:  # nothing listens
        finals = asyncio.run(_finals(r.grpc_target, [_request("k-down")]))
        assert finals[0].text
        again = asyncio.run(_finals(r.grpc_target, [_request("k-down")]))[0]
        assert again.replayed  # this process still remembers it
        assert len(r.backends["cloud"].served) == 1
        errors = metric(r.url, "fleetvl_router_idempotency_store_errors_total", op="get")
        assert errors >= 1
