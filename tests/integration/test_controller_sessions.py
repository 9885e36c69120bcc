"""Agent sessions over real gRPC against a real controller and Redis: register, policy push,
reconnect/resync, credentials, bad input."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.store import ControllerStore
from fleetvl.protocol import control_pb2 as cpb
from fleetvl.protocol import control_pb2_grpc as cpb_grpc
from tests.controller_harness import Agents, RunningController, new_namespace, wait_for

SITES = ["sub-001", "sub-002", "store-001", "store-002"]


def fleet_spec(**site_extra: Any) -> dict[str, Any]:
    return {
        "global_policy": {"deadline_ms": 8000, "residency": "prefer_edge"},
        "tenants": {"grid": {"policy": {"min_confidence": 0.7}}, "shop": {}},
        "sites": [
            {
                "id": s,
                "tenant": "grid" if s.startswith("sub") else "shop",
                "kind": "substation" if s.startswith("sub") else "retail_store",
                "tags": ["north"] if s.endswith("1") else ["south"],
                **site_extra.get(s, {}),
            }
            for s in SITES
        ],
    }


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = new_namespace()
    yield ns

    async def drop() -> None:
        store = ControllerStore("redis://127.0.0.1:6379/0", ns)
        await store.drop_all()
        await store.close()

    asyncio.run(drop())


@pytest.fixture
def controller(namespace: str, tmp_path: Path) -> Iterator[RunningController]:
    rc = RunningController(
        {"namespace": namespace, "spec": fleet_spec(), "bundle_dir": str(tmp_path / "store")}
    )
    yield rc
    rc.close()


@pytest.fixture
def agents(controller: RunningController, tmp_path: Path) -> Iterator[Agents]:
    a = Agents(controller.target, SITES, tmp_path / "agents")
    yield a
    a.close()


def test_agents_register_and_get_their_resolved_policy_layers(
    controller: RunningController, agents: Agents
) -> None:
    wait_for(agents.connected, what="agents to register")
    wait_for(lambda: all(h.last_policy() for h in agents.handlers.values()), what="policies")
    sub = agents.handlers["sub-001"].last_policy()
    shop = agents.handlers["store-001"].last_policy()
    assert sub is not None
    assert shop is not None
    assert sub["global"]["deadline_ms"] == 8000
    assert sub["tenant"] == {"min_confidence": 0.7}
    assert shop["tenant"] == {}
    status = controller.status()
    assert status["totals"]["connected"] == 4
    # Heartbeats arrive and carry the handler's metric summary.
    wait_for(
        lambda: all(s["requests_per_min"] > 0 for s in controller.status()["sites"]),
        what="heartbeat metrics",
    )


def test_policy_change_reaches_every_connected_agent(
    controller: RunningController, agents: Agents
) -> None:
    wait_for(agents.connected, what="agents to register")
    with controller.api() as api:
        r = api.put(
            "/api/policies/global",
            json={"policy": {"deadline_ms": 4000}, "why": "tighter deadline"},
        )
        assert r.status_code == 200, r.text
        version = r.json()["version"]
    for site, h in agents.handlers.items():
        wait_for(
            lambda h=h: (h.last_policy() or {}).get("global", {}).get("deadline_ms") == 4000,
            what=f"{site} to receive the new global policy",
        )
    # The controller knows every agent acknowledged that version.
    wait_for(
        lambda: all(s["policy_version"] >= version for s in controller.status()["sites"]),
        what="acks",
    )
    # A site-level change reaches only that site.
    before = {s: len(h.policies) for s, h in agents.handlers.items()}
    with controller.api() as api:
        r = api.put("/api/policies/site/store-002", json={"policy": {"residency": "edge_only"}})
        assert r.status_code == 200, r.text
    h2 = agents.handlers["store-002"]
    wait_for(
        lambda: (h2.last_policy() or {}).get("site") == {"residency": "edge_only"},
        what="site policy",
    )
    assert all(len(agents.handlers[s].policies) == before[s] for s in SITES if s != "store-002")
    audit = controller.api().get("/api/audit").json()
    assert any(e["what"] == "policy.set" and e["why"] == "tighter deadline" for e in audit)


def test_bad_policy_writes_are_refused_with_a_reason(controller: RunningController) -> None:
    with controller.api() as api:
        r = api.put("/api/policies/global", json={"policy": {"deadline_ms": -5}})
        assert r.status_code == 422
        assert r.json()["details"][0]["field"] == "deadline_ms"
        api.put("/api/policies/tenant/grid", json={"policy": {"residency": "edge_only"}})
        r = api.put("/api/policies/site/sub-001", json={"policy": {"residency": "cloud_ok"}})
        assert r.status_code == 422
        assert "only be tightened" in r.json()["error"]
        r = api.put("/api/policies/site/nope", json={"policy": {}})
        assert r.status_code == 404
        assert "unknown site 'nope'" in r.json()["error"]
        r = api.put(
            "/api/policies/global",
            json={"policy": {"deadline_ms": 10}},
            headers={"Authorization": "Bearer wrong"},
        )
        assert r.status_code == 401


def test_unknown_site_and_missing_register_get_grpc_errors(controller: RunningController) -> None:
    async def connect(first: cpb.AgentMessage) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(controller.target) as ch:
            call = cpb_grpc.ControlStub(ch).Connect(iter([first]))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                async for _ in call:
                    pass
            return ei.value.code()

    unknown = cpb.AgentMessage(register=cpb.Register(site="ghost"))
    assert asyncio.run(connect(unknown)) == grpc.StatusCode.NOT_FOUND
    hb_first = cpb.AgentMessage(heartbeat=cpb.Heartbeat(seq=1))
    assert asyncio.run(connect(hb_first)) == grpc.StatusCode.INVALID_ARGUMENT


def test_per_agent_credentials(namespace: str, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret-001").hexdigest()
    spec = fleet_spec(**{"sub-001": {"token_sha256": digest}})
    rc = RunningController(
        {"namespace": namespace, "spec": spec, "bundle_dir": str(tmp_path / "store")}
    )
    try:
        good = Agents(rc.target, ["sub-001"], tmp_path / "good", token="s3cret-001")
        bad = Agents(rc.target, ["sub-001"], tmp_path / "bad", token="guess")
        try:
            wait_for(good.connected, what="agent with the right token")
            assert not bad.clients["sub-001"].connected.is_set()
            assert bad.clients["sub-001"].sessions == 0
        finally:
            good.close()
            bad.close()
    finally:
        rc.close()


def test_reconnecting_agent_resyncs(
    controller: RunningController, agents: Agents, tmp_path: Path
) -> None:
    wait_for(agents.connected, what="agents to register")
    agents.close()  # the site loses its link
    wait_for(lambda: controller.status()["totals"]["connected"] == 0, what="disconnect seen")
    with controller.api() as api:
        api.put("/api/policies/tenant/shop", json={"policy": {"priority": "critical"}})
    again = Agents(controller.target, ["store-001"], tmp_path / "again")
    try:
        h = again.handlers["store-001"]
        wait_for(
            lambda: (h.last_policy() or {}).get("tenant") == {"priority": "critical"},
            what="policy changed while offline to arrive on reconnect",
        )
    finally:
        again.close()


def test_commands_reach_the_agent_and_offline_sites_get_409(
    controller: RunningController, agents: Agents
) -> None:
    wait_for(agents.connected, what="agents to register")
    with controller.api() as api:
        r = api.post(
            "/api/sites/sub-002/commands",
            json={"name": "recalibrate", "args": {"target_escalation": "0.1"}},
        )
        assert r.status_code == 200, r.text
        h = agents.handlers["sub-002"]
        wait_for(lambda: h.commands, what="the command")
        assert h.commands == [("recalibrate", {"target_escalation": "0.1"})]
        r = api.post("/api/sites/sub-002/commands", json={"name": "format-disk"})
        assert r.status_code == 422
        assert r.json()["details"][0]["field"] == "body.name"
        agents.close()
        wait_for(lambda: controller.status()["totals"]["connected"] == 0, what="disconnect")
        r = api.post("/api/sites/sub-002/commands", json={"name": "reload"})
        assert r.status_code == 409
        assert "no connected agent" in r.json()["error"]


def test_metrics_and_request_log(controller: RunningController, agents: Agents) -> None:
    wait_for(agents.connected, what="agents to register")
    with controller.api() as api:
        api.put("/api/policies/global", json={"policy": {"deadline_ms": 9000}})
        wait_for(
            lambda: all(s["policy_version"] > 0 for s in controller.status()["sites"]), what="acks"
        )
        text = api.get("/metrics").text
    assert "fleetvl_controller_agents_connected 4.0" in text
    assert 'fleetvl_controller_pushes_total{kind="policies"}' in text
    assert 'fleetvl_controller_push_ack_seconds_count{kind="policies"}' in text
    assert "fleetvl_controller_heartbeats_total" in text


def test_redis_outage_refuses_writes_and_keeps_sessions(tmp_path: Path) -> None:
    from tests.redis_servers import RedisServer

    server = RedisServer().start()
    rc = RunningController(
        {
            "namespace": "test-outage",
            "spec": fleet_spec(),
            "redis_url": server.url,
            "bundle_dir": str(tmp_path / "store"),
        }
    )
    agents = Agents(rc.target, ["sub-001"], tmp_path / "agents")
    try:
        wait_for(agents.connected, what="agent to register")
        server.stop()
        with rc.api() as api:
            r = api.put("/api/policies/global", json={"policy": {"deadline_ms": 3000}})
            assert r.status_code == 503
            assert "Redis is unavailable" in r.json()["error"]
            # Nothing half-applied: the agent still has the old policy; status still works.
            assert api.get("/api/status").json()["totals"]["connected"] == 1
        assert agents.handlers["sub-001"].last_policy()["global"]["deadline_ms"] == 8000
    finally:
        agents.close()
        rc.close()
        server.stop()


def test_a_clamp_already_in_the_spec_does_not_block_other_writes(
    namespace: str, tmp_path: Path
) -> None:
    spec = fleet_spec(**{"sub-001": {"policy": {"residency": "cloud_ok"}}})
    spec["tenants"]["grid"]["policy"] = {"residency": "edge_only"}  # sub-001 is clamped
    rc = RunningController(
        {"namespace": namespace, "spec": spec, "bundle_dir": str(tmp_path / "store")}
    )
    try:
        with rc.api() as api:
            assert api.get("/api/sites/sub-001/policy").json()["resolved"]["residency"] == (
                "edge_only"
            )
            r = api.put("/api/policies/global", json={"policy": {"deadline_ms": 5000}})
            assert r.status_code == 200, r.text
            r = api.put("/api/policies/site/sub-002", json={"policy": {"residency": "cloud_ok"}})
            assert r.status_code == 422
            assert "sub-002" in r.json()["error"]
    finally:
        rc.close()
