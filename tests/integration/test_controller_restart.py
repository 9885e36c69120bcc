"""`kill -9` of a real `fleetvl controller run` process: desired state survives in Redis,
agents reconnect and resynchronize without reinstalling what they already run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml

from controller.store import ControllerStore
from tests.controller_harness import Agents, ControllerProcess, new_namespace, wait_for
from tests.integration.test_controller_rollouts import digest_of, make_bundle

SITES = ["sub-001", "sub-002", "store-001"]


def test_kill9_loses_no_desired_state_and_agents_resync(tmp_path: Path) -> None:
    ns = new_namespace()
    v1, v2 = make_bundle(tmp_path, "v1"), make_bundle(tmp_path, "v2")
    spec = {
        "tenants": {"grid": {"bundle": "v1"}},
        "bundles": {"v1": {"digest": digest_of(v1)}, "v2": {"digest": digest_of(v2)}},
        "sites": [{"id": s, "tenant": "grid"} for s in SITES],
    }
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(spec))
    cp = ControllerProcess(
        {
            "namespace": ns,
            "spec_file": "fleet.yaml",
            "bundle_dir": str(tmp_path / "store"),
            "heartbeat_s": 0.2,
        },
        tmp_path,
    )
    agents = None
    try:
        cp.start()
        with cp.api() as api:
            for data in (v1, v2):
                assert api.post("/api/bundles", content=data).status_code == 200
        agents = Agents(cp.target, SITES, tmp_path / "agents")
        wait_for(agents.connected, what="agents to register")
        with cp.api() as api:
            r = api.put(
                "/api/policies/site/sub-002",
                json={"policy": {"deadline_ms": 1500}, "why": "tight site"},
            )
            assert r.status_code == 200
            r = api.put("/api/sites/store-001/bundle", json={"bundle": "v2", "why": "pilot"})
            assert r.status_code == 200
        h2, h3 = agents.handlers["sub-002"], agents.handlers["store-001"]
        wait_for(lambda: (h2.last_policy() or {}).get("site") == {"deadline_ms": 1500})
        wait_for(lambda: h3.active == digest_of(v2), what="store-001 on v2")
        installs = {s: len(h.installs) for s, h in agents.handlers.items()}
        with cp.api() as api:
            audit_before = api.get("/api/audit").json()

        cp.kill9()
        cp.start()

        # Agents come back on their own (reconnect with backoff) and re-register.
        wait_for(
            lambda: all(c.sessions >= 2 for c in agents.clients.values()),
            30,
            "agents to reconnect to the restarted controller",
        )
        with cp.api() as api:
            pol = api.get("/api/sites/sub-002/policy").json()
            assert pol["resolved"]["deadline_ms"] == 1500
            assert api.get("/api/audit").json()[: len(audit_before)] == audit_before

            def synced() -> bool:
                st = api.get("/api/status").json()
                rows = {s["id"]: s for s in st["sites"]}
                return all(r["connected"] and r["in_sync"] for r in rows.values()) and rows[
                    "store-001"
                ]["active_bundle"] == digest_of(v2)

            wait_for(synced, 20, "restarted controller to see every site in sync")
        # Soft state came back from re-reports: nothing was reinstalled.
        assert {s: len(h.installs) for s, h in agents.handlers.items()} == installs
        # The resync push carried the same desired policy.
        assert (h2.last_policy() or {}).get("site") == {"deadline_ms": 1500}
        # And the restarted controller pushes new changes to everyone.
        with cp.api() as api:
            api.put("/api/policies/global", json={"policy": {"deadline_ms": 7000}})
        for h in agents.handlers.values():
            wait_for(lambda h=h: (h.last_policy() or {})["global"]["deadline_ms"] == 7000)
        log_lines = [json.loads(x) for x in cp.log.read_text().splitlines() if x.startswith("{")]
        assert sum(1 for x in log_lines if x.get("event") == "agent.register") >= 2 * len(SITES)
    finally:
        if agents is not None:
            agents.close()
        cp.stop()

        async def drop() -> None:
            store = ControllerStore("redis://127.0.0.1:6379/0", ns)
            await store.drop_all()
            await store.close()

        asyncio.run(drop())


def test_rollout_in_progress_survives_kill9_and_completes(tmp_path: Path) -> None:
    ns = new_namespace()
    v1, v2 = make_bundle(tmp_path, "v1"), make_bundle(tmp_path, "v2")
    sites = [f"sub-{i:03d}" for i in range(4)]
    spec = {
        "tenants": {"grid": {"bundle": "v1"}},
        "bundles": {"v1": {"digest": digest_of(v1)}, "v2": {"digest": digest_of(v2)}},
        "sites": [{"id": s, "tenant": "grid"} for s in sites],
    }
    cp = ControllerProcess(
        {
            "namespace": ns,
            "spec": spec,
            "rollout_tick_s": 0.2,
            "bundle_dir": str(tmp_path / "store"),
        },
        tmp_path,
    )
    agents = None
    try:
        cp.start()
        with cp.api() as api:
            for data in (v1, v2):
                assert api.post("/api/bundles", content=data).status_code == 200
        agents = Agents(cp.target, sites, tmp_path / "agents")
        on_v2 = lambda: {s for s, h in agents.handlers.items() if h.active == digest_of(v2)}  # noqa: E731
        wait_for(lambda: all(h.active == digest_of(v1) for h in agents.handlers.values()))
        plan = {
            "id": "crash",
            "bundle": "v2",
            "waves": [50, 100],
            "gate": {"bake_s": 3, "min_requests": 50},
        }
        with cp.api() as api:
            assert api.post("/api/rollouts", json=plan).status_code == 201
        wait_for(lambda: len(on_v2()) == 2, what="first wave on v2")
        canaries = on_v2()

        cp.kill9()
        cp.start()

        with cp.api() as api:
            r = api.get("/api/rollouts/crash").json()
            assert r["status"] == "running"
            assert set(r["wave_sites"]) == canaries
            wait_for(
                lambda: api.get("/api/rollouts/crash").json()["status"] == "completed",
                40,
                "the resumed rollout to complete",
            )
            r = api.get("/api/rollouts/crash").json()
        assert on_v2() == set(sites)
        whats = [e["what"] for e in r["history"]]
        assert whats.count("rollout.start") == 1
        assert whats[-1] == "rollout.completed"
    finally:
        if agents is not None:
            agents.close()
        cp.stop()

        async def drop() -> None:
            store = ControllerStore("redis://127.0.0.1:6379/0", ns)
            await store.drop_all()
            await store.close()

        asyncio.run(drop())
