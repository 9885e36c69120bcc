"""The status page as a person sees it: loaded in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.store import ControllerStore
from tests.controller_harness import ADMIN, Agents, RunningController, new_namespace, wait_for
from tests.integration.test_controller_rollouts import digest_of, make_bundle

CHROMIUM = "/usr/bin/chromium"
SITES = ["sub-001", "sub-002", "sub-003", "store-001", "store-002"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed here when missing (the test setup runs as root)."""
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium is missing and cannot be installed (needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if r.returncode != 0:
                pytest.skip(f"could not install chromium ({' '.join(cmd)}): {r.stderr[-500:]}")
    return CHROMIUM


def _chromium(binary: str, tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [binary, *flags, *args, url], capture_output=True, text=True, timeout=120, check=True
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ns = new_namespace()
    v1, v2 = make_bundle(tmp_path, "v1"), make_bundle(tmp_path, "v2")
    spec = {
        "tenants": {"grid": {"bundle": "edge-int4-v1"}, "shop": {"bundle": "edge-int4-v1"}},
        "bundles": {
            "edge-int4-v1": {"digest": digest_of(v1)},
            "edge-int4-v2": {"digest": digest_of(v2)},
        },
        "sites": [
            {
                "id": s,
                "tenant": "grid" if s.startswith("sub") else "shop",
                "kind": "substation" if s.startswith("sub") else "retail_store",
                "location": {"name": f"Leeds {s[-1]}"},
            }
            for s in [*SITES, "sub-004"]
        ],
    }
    rc = RunningController(
        {
            "namespace": ns,
            "spec": spec,
            "status_page_public": True,
            "rollout_tick_s": 0.1,
            "bundle_dir": str(tmp_path / "store"),
        }
    )
    with rc.api() as api:
        for data in (v1, v2):
            api.post("/api/bundles", content=data).raise_for_status()
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


def test_status_page_in_headless_chromium(
    fleet: dict[str, Any], chromium: str, tmp_path: Path
) -> None:
    rc, agents = fleet["rc"], fleet["agents"]
    agents.handlers["store-002"].healthy = {
        **agents.handlers["store-002"].healthy,
        "escalation_rate": 0.35,
        "cache_rate": 0.42,
    }
    wait_for(lambda: rc.status()["totals"]["healthy"] == 5, what="five healthy sites")
    with rc.api() as api:
        plan = {
            "id": "int4-v2",
            "bundle": "edge-int4-v2",
            "waves": [34, 100],
            "selector": {"tenant": "grid"},
            "gate": {"bake_s": 3600},
        }
        assert api.post("/api/rollouts", json=plan).status_code == 201
    wait_for(
        lambda: any(s["active_bundle"] == fleet["v2"] for s in rc.status()["sites"]),
        what="a canary on v2",
    )
    wait_for(
        lambda: all(s["requests_per_min"] > 0 for s in rc.status()["sites"][:5]),
        what="a minute's worth of heartbeats",
    )

    shot = tmp_path / "controller_status.png"
    _chromium(chromium, tmp_path, rc.url + "/", f"--screenshot={shot}", "--window-size=1400,960")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered table, not a blank page
    if os.environ.get("FLEETVL_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["FLEETVL_KEEP_SCREENSHOT"])
    dom = _chromium(chromium, tmp_path, rc.url + "/", "--dump-dom").stdout

    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: dict[str, list[str]] = {}
            self.cur: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "tr" and (key := a.get("data-site") or a.get("data-rollout")):
                self.cur = self.rows.setdefault(key, [])

        def handle_endtag(self, tag: str) -> None:
            if tag == "tr":
                self.cur = None

        def handle_data(self, data: str) -> None:
            if self.cur is not None and data.strip():
                self.cur.append(" ".join(data.split()))

    p = Rows()
    p.feed(dom)
    assert set(p.rows) == {*SITES, "sub-004", "int4-v2"}
    assert "offline" in p.rows["sub-004"]
    assert "never" in p.rows["sub-004"]
    for s in SITES:
        assert "healthy" in p.rows[s], p.rows[s]
        assert any(x.endswith(" s ago") for x in p.rows[s])
    assert "35.0%" in p.rows["store-002"]  # its escalation rate
    assert "42.0%" in p.rows["store-002"]  # answered from the fleet's answer cache
    assert "99.0%" in p.rows["store-001"]  # SLA attainment
    assert "running" in p.rows["int4-v2"]
    assert "1 / 2 (34%)" in p.rows["int4-v2"]
    assert "rollout.start" in dom  # the recent-changes table names what happened
    assert "admin:admin" in dom
    assert "2 / 4 sites" in p.rows["int4-v2"]  # 34% of grid's 4 substations, rounded up
    # Canaries run the new bundle, or (offline sub-004) show it as pending with an arrow.
    canaries = [s for s, row in p.rows.items() if any("edge-int4-v2" in x for x in row)]
    assert len(canaries) == 3  # two sites and the rollout row
    assert all(s.startswith(("sub", "int4")) for s in canaries)


def test_status_page_needs_the_token_unless_public(fleet: dict[str, Any], tmp_path: Path) -> None:
    rc = fleet["rc"]
    rc.ctl.config.status_page_public = False
    assert httpx.get(rc.url + "/").status_code == 401
    r = httpx.get(rc.url + "/", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    assert "FleetVL fleet status" in r.text
