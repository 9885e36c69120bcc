"""Bundles and staged rollouts end to end: real controller, real gRPC agents, real Redis.

Each agent's handler reports metrics by the bundle it runs (``RecordingHandler.profiles``):
a stand-in for a model that answers worse, so the gate sees what a real fleet would report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.bundles import pack_bundle
from controller.store import ControllerStore
from tests.controller_harness import Agents, RunningController, new_namespace, wait_for

SITES = [f"sub-{i:03d}" for i in range(10)]
BAD = {
    "requests": 50.0,
    "errors": 6.0,
    "escalation_rate": 0.4,
    "sla_attainment": 0.80,
    "p95_ms": 900.0,
}


def make_bundle(tmp: Path, name: str) -> bytes:
    d = tmp / f"src-{name}"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"name": name}))
    (d / "model.onnx").write_bytes(hashlib.sha256(name.encode()).digest() * 64)
    return pack_bundle(d)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ns = new_namespace()
    v1, v2 = make_bundle(tmp_path, "v1"), make_bundle(tmp_path, "v2")
    spec = {
        "tenants": {"grid": {"bundle": "v1"}},
        "bundles": {"v1": {"digest": digest_of(v1)}, "v2": {"digest": digest_of(v2)}},
        "sites": [{"id": s, "tenant": "grid", "kind": "substation"} for s in SITES],
    }
    rc = RunningController(
        {
            "namespace": ns,
            "spec": spec,
            "rollout_tick_s": 0.1,
            "bundle_dir": str(tmp_path / "store"),
        }
    )
    with rc.api() as api:
        for data in (v1, v2):
            assert api.post("/api/bundles", content=data).status_code == 200
    agents = Agents(rc.target, SITES, tmp_path / "agents")
    try:
        yield {"rc": rc, "agents": agents, "v1": digest_of(v1), "v2": digest_of(v2)}
    finally:
        agents.close()
        rc.close()

        async def drop() -> None:
            store = ControllerStore("redis://127.0.0.1:6379/0", ns)
            await store.drop_all()
            await store.close()

        asyncio.run(drop())


def _on(rc: RunningController, digest: str) -> set[str]:
    return {s["id"] for s in rc.status()["sites"] if s["active_bundle"] == digest}


def _rollout(rc: RunningController, rid: str) -> dict[str, Any]:
    with rc.api() as api:
        return api.get(f"/api/rollouts/{rid}").json()


def _plan(rid: str, **gate: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "bundle": "v2",
        "waves": [20, 50, 100],
        "why": "new model",
        "gate": {"bake_s": 0.6, "min_requests": 50, **gate},
    }


def test_agents_download_verify_and_install_the_assigned_bundle(fleet: dict[str, Any]) -> None:
    rc, agents = fleet["rc"], fleet["agents"]
    wait_for(lambda: _on(rc, fleet["v1"]) == set(SITES), what="every site on v1")
    h = agents.handlers["sub-000"]
    path, digest = h.installs[0]
    assert digest == fleet["v1"]
    assert json.loads((path / "manifest.json").read_text()) == {"name": "v1"}


def test_healthy_canaries_complete_the_rollout(fleet: dict[str, Any]) -> None:
    rc = fleet["rc"]
    wait_for(lambda: _on(rc, fleet["v1"]) == set(SITES), what="every site on v1")
    with rc.api() as api:
        r = api.post("/api/rollouts", json=_plan("good"))
        assert r.status_code == 201, r.text
    # First wave: 20% of 10 sites.
    wait_for(lambda: len(_on(rc, fleet["v2"])) >= 2, what="canaries on v2")
    assert len(_on(rc, fleet["v2"])) == 2
    wait_for(lambda: _rollout(rc, "good")["status"] == "completed", 30, "rollout to complete")
    assert _on(rc, fleet["v2"]) == set(SITES)
    r = _rollout(rc, "good")
    whats = [e["what"] for e in r["history"]]
    assert whats.count("rollout.gate_passed") == 2
    assert r["history"][0]["who"] == "admin:admin"
    assert r["history"][0]["why"] == "new model"


def test_worse_canaries_roll_back_by_themselves(fleet: dict[str, Any]) -> None:
    rc, agents = fleet["rc"], fleet["agents"]
    for h in agents.handlers.values():
        h.profiles[fleet["v2"]] = BAD
    wait_for(lambda: _on(rc, fleet["v1"]) == set(SITES), what="every site on v1")
    with rc.api() as api:
        assert api.post("/api/rollouts", json=_plan("bad")).status_code == 201
    wait_for(lambda: _rollout(rc, "bad")["status"] == "rolled_back", 30, "automatic rollback")
    r = _rollout(rc, "bad")
    assert "gate failed" in r["history"][-1]["why"]
    assert "SLA attainment" in r["history"][-1]["why"]
    assert r["history"][-1]["who"] == "rollout:bad"
    # The canaries are back on the old bundle, and the rest never left it.
    wait_for(lambda: _on(rc, fleet["v1"]) == set(SITES), what="every site back on v1")
    touched = [
        s for s, h in agents.handlers.items() if any(d == fleet["v2"] for _, d in h.installs)
    ]
    assert len(touched) == 2


def test_pause_resume_abort(fleet: dict[str, Any]) -> None:
    rc = fleet["rc"]
    wait_for(lambda: _on(rc, fleet["v1"]) == set(SITES), what="every site on v1")
    with rc.api() as api:
        api.post("/api/rollouts", json=_plan("ops", bake_s=60))
        assert (
            api.post("/api/rollouts/ops/pause", json={"why": "night"}).json()["status"] == "paused"
        )
        r = api.post("/api/rollouts/ops/pause", json={})
        assert r.status_code == 409
        assert "while it is paused" in r.json()["error"]
        assert api.post("/api/rollouts/ops/resume", json={}).json()["status"] == "running"
        wait_for(lambda: len(_on(rc, fleet["v2"])) == 2, what="canaries on v2")
        assert (
            api.post("/api/rollouts/ops/abort", json={"why": "test"}).json()["status"] == "aborted"
        )
    wait_for(lambda: _on(rc, fleet["v1"]) == set(SITES), what="aborted rollout reverted")
    with rc.api() as api:
        assert api.post("/api/rollouts", json=_plan("ops")).status_code == 409


def test_bundle_with_a_wrong_digest_is_refused_and_reported(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    rc, agents = fleet["rc"], fleet["agents"]
    wait_for(lambda: _on(rc, fleet["v1"]) == set(SITES), what="every site on v1")
    # A store whose blob rotted: the file served under v2's digest holds other bytes.
    store_file = Path(rc.config.bundle_dir) / fleet["v2"].removeprefix("sha256:")
    store_file.write_bytes(make_bundle(tmp_path, "tampered"))
    with rc.api() as api:
        r = api.put("/api/sites/sub-003/bundle", json={"bundle": "v2", "why": "try v2"})
        assert r.status_code == 200, r.text

    def refused() -> dict[str, Any] | None:
        row = next(s for s in rc.status()["sites"] if s["id"] == "sub-003")
        return row["bundle_error"]

    err = wait_for(refused, what="the agent to report the refusal")
    assert err["digest"] == fleet["v2"]
    assert "digest mismatch" in err["error"]
    assert agents.handlers["sub-003"].active == fleet["v1"]  # still serving the old bundle
    assert [d for _, d in agents.handlers["sub-003"].installs] == [fleet["v1"]]
    with rc.api() as api:
        audit = api.get("/api/audit").json()
    assert any(e["what"] == "bundle.refused" and e["site"] == "sub-003" for e in audit)


def test_bad_uploads_are_refused(fleet: dict[str, Any]) -> None:
    with fleet["rc"].api() as api:
        r = api.post("/api/bundles", content=b"not a tar archive" * 100)
        assert r.status_code == 422
        assert "tar archive" in r.json()["error"]
        r = api.post(
            "/api/bundles",
            content=make_bundle(Path(fleet["rc"].config.bundle_dir).parent, "v9"),
            headers={"x-bundle-digest": "sha256:" + "0" * 64},
        )
        assert r.status_code == 422
        assert "digest mismatch" in r.json()["error"]
        r = api.put("/api/sites/sub-001/bundle", json={"bundle": "nope"})
        assert r.status_code == 404
        assert "unknown bundle 'nope'" in r.json()["error"]
        r = api.post("/api/rollouts", json={"id": "x", "bundle": "v2", "waves": [50]})
        assert r.status_code == 422
    assert not list(Path(fleet["rc"].config.bundle_dir).glob("*.upload"))
