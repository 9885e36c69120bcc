"""EdgeSite / SlaPolicy custom resources through the real `kubernetes` client, against
FakeKubeApiServer (a fake of the API server's list/watch wire format: none can run here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.store import ControllerStore
from tests.controller_harness import Agents, RunningController, new_namespace, wait_for
from tests.fake_kube_api import FakeKubeApiServer

pytest.importorskip("kubernetes", reason="the controller extra (kubernetes client) is missing")


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    k = FakeKubeApiServer(token="kube-token")
    yield k
    k.close()


def test_custom_resources_add_sites_and_policies_live(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    ns = new_namespace()
    kube.apply(
        "fleet", "edgesites", "sub-100", {"tenant": "grid", "kind": "substation", "tags": ["crd"]}
    )
    kube.apply("fleet", "edgesites", "bad-site", {"tenant": "grid", "tags": "not-a-list"})
    spec = {"tenants": {"grid": {}}, "sites": [{"id": "file-site", "tenant": "grid"}]}
    rc = RunningController(
        {
            "namespace": ns,
            "spec": spec,
            "bundle_dir": str(tmp_path / "store"),
            "kube": {
                "enabled": True,
                "namespace": "fleet",
                "host": kube.url,
                "token": "kube-token",
            },
        }
    )
    agents = None
    try:
        # The listed EdgeSite joins the file's site; the invalid one is skipped with a reason.
        wait_for(
            lambda: {s["id"] for s in rc.status()["sites"]} == {"file-site", "sub-100"},
            what="EdgeSite from the list",
        )
        assert any("EdgeSite bad-site" in p for p in rc.ctl.kube_problems)
        agents = Agents(rc.target, ["sub-100"], tmp_path / "agents")
        wait_for(agents.connected, what="the CR site's agent to register")
        h = agents.handlers["sub-100"]
        # Watch events: a new SlaPolicy reaches the agent; a new EdgeSite appears.
        kube.apply(
            "fleet",
            "slapolicies",
            "grid-strict",
            {"level": "tenant", "target": "grid", "policy": {"residency": "edge_only"}},
        )
        wait_for(
            lambda: (h.last_policy() or {}).get("tenant") == {"residency": "edge_only"},
            what="tenant SlaPolicy pushed to the agent",
        )
        kube.apply("fleet", "edgesites", "sub-101", {"tenant": "grid"})
        wait_for(lambda: "sub-101" in {s["id"] for s in rc.status()["sites"]}, what="ADDED")
        kube.delete("fleet", "edgesites", "sub-101")
        wait_for(lambda: "sub-101" not in {s["id"] for s in rc.status()["sites"]}, what="DELETED")

        # History compacted: the next watch gets 410 Gone and the client lists again.
        def lists() -> int:
            return sum(1 for r in kube.requests if "edgesites" in r and "watch" not in r)

        before = lists()
        kube.compact()
        wait_for(lambda: lists() > before, 10, "a re-list after 410 Gone")
        kube.apply(
            "fleet", "slapolicies", "global", {"level": "global", "policy": {"deadline_ms": 2500}}
        )
        wait_for(
            lambda: (h.last_policy() or {}).get("global", {}).get("deadline_ms") == 2500,
            what="global SlaPolicy",
        )
        assert any("watch=true" in r for r in kube.requests)
        with rc.api() as api:
            assert any(e["who"] == "kube" for e in api.get("/api/audit").json())
    finally:
        if agents is not None:
            agents.close()
        rc.close()

        async def drop() -> None:
            store = ControllerStore("redis://127.0.0.1:6379/0", ns)
            await store.drop_all()
            await store.close()

        asyncio.run(drop())
