"""The controller owns policy for the router too: a real router watching a real controller
takes its SLA layers and sites, follows changes made through the admin API, keeps the last
state through a controller outage, and turns away the agent of a site the fleet lacks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from tests.controller_harness import (
    ADMIN,
    RunningController,
    drop_namespace,
    new_namespace,
    wait_for,
)
from tests.router_harness import RunningRouter

SPEC = {
    "global_policy": {"deadline_ms": 8000, "residency": "prefer_edge"},
    "tenants": {"grid": {}},
    "sites": [{"id": "sub-001", "tenant": "grid"}],
}


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[RunningController]:
    ns = new_namespace()
    rc = RunningController({"namespace": ns, "spec": SPEC, "bundle_dir": str(tmp_path / "b")})
    yield rc
    rc.close()
    drop_namespace(ns)


def _router(controller: RunningController, token: str = ADMIN) -> RunningRouter:
    return RunningRouter({
        "backends": [{"name": "cloud", "type": "simulated", "models": ["fleet-sim"],
                      "simulated": {"ttft_s": 0.001, "output_tokens": 2}}],
        "controller": {"target": controller.target, "token": token, "retry_s": 0.1},
    })  # fmt: skip


def _metrics(router: RunningRouter) -> str:
    return httpx.get(router.url + "/metrics").text


def _ask(router: RunningRouter, site: str) -> int:
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    try:
        client.chat.completions.create(
            model="fleet-sim", messages=[{"role": "user", "content": "gauge?"}], max_tokens=2,
            extra_body={"site": site},
        )  # fmt: skip
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def _agent_may_connect(router: RunningRouter, site: str) -> bool:
    """Open the agent's stream as a site's agent does; False when the router refuses it."""

    async def connect() -> grpc.StatusCode | None:
        async with grpc.aio.insecure_channel(router.grpc_target) as ch:
            hello = pb.AgentUp(hello=pb.AgentHello(site=site, agent_version="test"))
            call = pb_grpc.RouterStub(ch).AgentConnect(iter([hello]))
            try:
                await asyncio.wait_for(call.read(), 0.5)
            except TimeoutError:
                return None  # held open: the router waits to send it calls
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            finally:
                call.cancel()
            return None

    refused = asyncio.run(connect())
    assert refused in (None, grpc.StatusCode.PERMISSION_DENIED), refused
    return refused is None


def test_router_follows_the_controllers_policies_and_sites(controller: RunningController) -> None:
    with _router(controller) as router, controller.api() as api:
        wait_for(lambda: "fleetvl_router_controller_connected 1.0" in _metrics(router),
                 what="first state")  # fmt: skip
        assert _ask(router, "sub-001") == 200  # prefer_edge, no agent: the cloud answers
        # The operator pins the site to its edge box: the router refuses to send it to the
        # cloud from then on (503), without a restart or a router.yaml edit.
        r = api.put("/api/policies/site/sub-001", json={"policy": {"residency": "edge_only"}})
        assert r.status_code == 200, r.text
        wait_for(lambda: _ask(router, "sub-001") == 503, what="edge_only reaches the router")
        # A site added through the admin API: its agent may now dial in; one the fleet does
        # not have is turned away.
        assert not _agent_may_connect(router, "sub-002")
        r = api.put("/api/sites/sub-002", json={"id": "sub-002", "tenant": "grid"})
        assert r.status_code == 200, r.text
        wait_for(lambda: _agent_may_connect(router, "sub-002"), what="new site's agent")
        # The controller goes away: the router keeps serving on the last state it applied.
        controller.close()
        wait_for(lambda: "fleetvl_router_controller_connected 0.0" in _metrics(router),
                 what="watch closed")  # fmt: skip
        assert _ask(router, "sub-001") == 503
        assert _ask(router, "sub-009") == 200


def test_a_router_with_a_wrong_token_gets_no_state(controller: RunningController) -> None:
    with _router(controller, token="not-the-token") as router:
        wait_for(lambda: 'fleetvl_router_controller_errors_total{code="UNAUTHENTICATED"}'
                 in _metrics(router), what="refused watch")  # fmt: skip
        assert controller.ctl.routing.watchers == 0
        assert not _agent_may_connect(router, "sub-001")  # no sites but its own config's
        assert _ask(router, "sub-001") == 200
