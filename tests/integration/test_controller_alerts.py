"""Site health alerts end to end over real gRPC and Redis: per-source out-of-scope verdicts
kept by the agent (``SourceHealth``) ride the control client's heartbeats to a real
controller, which raises and clears the alert on ``GET /v1/alerts``, the status page and
``/metrics``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent, AgentConfig
from edge_agent.agent.source_health import SourceHealth
from edge_agent.control import ControlClient, ControlClientConfig
from tests.controller_harness import (
    LoopThread,
    RecordingHandler,
    RunningController,
    drop_namespace,
    new_namespace,
    wait_for,
)

SITE = "substation-12"
SPEC = {
    "tenants": {"grid": {}},
    "sites": [
        {"id": SITE, "tenant": "grid", "kind": "substation"},
        {"id": "sub-2", "tenant": "grid"},
    ],
}
CAM3 = "source cam-3 at substation-12: 21 of the last 25 frames out of scope (camera)"
UNNAMED = "source (unnamed) at substation-12: 22 of the last 25 frames out of scope"


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[RunningController]:
    ns = new_namespace()
    rc = RunningController(
        {
            "namespace": ns,
            "spec": SPEC,
            "bundle_dir": str(tmp_path / "store"),
            "alerts": {"out_of_scope_min": 20, "out_of_scope_window": 25},
        }
    )
    yield rc
    rc.close()
    drop_namespace(ns)


class SiteAgent:
    """A real ControlClient whose heartbeats carry ``sources()``."""

    def __init__(
        self, rc: RunningController, tmp: Path, sources: Callable[[], Iterable[Any]]
    ) -> None:
        self.lt = LoopThread()
        self.handler = RecordingHandler(tmp / "bundles")
        cfg = ControlClientConfig(
            target=rc.target, site=SITE, bundle_dir=self.handler.bundle_dir, heartbeat_s=0.1
        )

        async def make() -> ControlClient:  # built on its loop: its asyncio objects live there
            return ControlClient(cfg, self.handler, sources=sources)

        self.client: ControlClient = self.lt.call(make())
        self.task = self.lt.submit(self.client.run())

    def close(self) -> None:
        self.lt.call(self.client.stop())
        self.task.result(10)
        self.lt.close()


def _alerts(rc: RunningController) -> list[dict[str, Any]]:
    with rc.api() as api:
        r = api.get("/v1/alerts")
        assert r.status_code == 200, r.text
        return r.json()["alerts"]


def _gauge(rc: RunningController) -> float:
    with rc.api() as api:
        text = api.get("/metrics").text
    m = re.search(r'^fleetvl_controller_site_alerts\{kind="out_of_scope"\} (\S+)$', text, re.M)
    assert m, "the site alerts gauge is missing from /metrics"
    return float(m.group(1))


def _page(rc: RunningController) -> str:
    with rc.api() as api:
        r = api.get("/")
        assert r.status_code == 200
        return r.text


def _record(health: SourceHealth, source: str | None, out: int, total: int, part: str) -> None:
    for i in range(total):
        health.record(source, i >= total - out, part if i >= total - out else None)


def test_out_of_scope_run_raises_and_clears_a_site_alert(
    controller: RunningController, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleetvl.controller")
    health = SourceHealth(window=25)
    _record(health, "cam-1", 3, 25, "vision")  # a healthy camera: no alert
    _record(health, "cam-3", 21, 25, "camera")
    _record(health, None, 22, 25, "")  # requests that name no source
    agent = SiteAgent(controller, tmp_path, health.snapshot)
    try:
        alerts = wait_for(
            lambda: len(_alerts(controller)) == 2 and _alerts(controller), what="alerts"
        )
        # Sorted by site then source: the unnamed source ("") first.
        unnamed, cam3 = alerts
        assert isinstance(cam3.pop("since"), float)
        assert cam3 == {
            "site": SITE,
            "source": "cam-3",
            "kind": "out_of_scope",
            "frames": 25,
            "out_of_scope": 21,
            "part": "camera",
            "message": CAM3,
        }
        assert unnamed["message"] == UNNAMED
        assert unnamed["part"] == ""
        # One site's alerts: the filter, and the site's row in the status.
        with controller.api() as api:
            assert api.get("/v1/alerts", params={"site": "sub-2"}).json() == {"alerts": []}
            assert len(api.get("/v1/alerts", params={"site": SITE}).json()["alerts"]) == 2
            r = api.get("/v1/alerts", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
        row = next(s for s in controller.status()["sites"] if s["id"] == SITE)
        assert [a["message"] for a in row["alerts"]] == [UNNAMED, CAM3]
        page = _page(controller)
        assert "Site health alerts" in page
        assert CAM3 in page
        assert UNNAMED in page
        assert _gauge(controller) == 2

        # The cameras recover: the next heartbeats report no out-of-scope frame in the window.
        _record(health, "cam-3", 0, 25, "")
        _record(health, None, 0, 25, "")
        wait_for(lambda: _alerts(controller) == [], what="alerts to clear")
        page = _page(controller)
        assert CAM3 not in page
        section = page.split("Site health alerts", 1)[1].split("<h2>", 1)[0]
        assert ">none<" in section
        assert _gauge(controller) == 0
        row = next(s for s in controller.status()["sites"] if s["id"] == SITE)
        assert row["alerts"] == []
    finally:
        agent.close()
    events = [json.loads(r.getMessage()) for r in caplog.records if '"alert.' in r.getMessage()]
    raised = [e for e in events if e["event"] == "alert.raised"]
    cleared = [e for e in events if e["event"] == "alert.cleared"]
    assert sorted(e["message"] for e in raised) == sorted([CAM3, UNNAMED])
    assert sorted(e["source"] for e in cleared) == ["", "cam-3"]
    assert all(e["site"] == SITE for e in events)


def test_a_failing_snapshot_does_not_stop_heartbeats(
    controller: RunningController, tmp_path: Path
) -> None:
    def broken() -> list[Any]:
        raise RuntimeError("no health today")

    agent = SiteAgent(controller, tmp_path, broken)
    try:
        wait_for(
            lambda: (
                next(s for s in controller.status()["sites"] if s["id"] == SITE)["requests_per_min"]
                > 0
            ),
            what="heartbeats without sources",
        )
        assert _alerts(controller) == []
    finally:
        agent.close()


def test_agent_daemon_heartbeats_carry_its_source_health(
    controller: RunningController, fp32_bundle: Path, tmp_path: Path
) -> None:
    """The wiring in ``edge_agent.agent.main``: the daemon's control client reports
    ``AgentService.health`` with every heartbeat."""
    cfg = AgentConfig(
        site=SITE,
        bundle=fp32_bundle,
        spool={"path": tmp_path / "s.db"},
        controller={
            "target": controller.target,
            "heartbeat_s": 0.1,
            "bundle_dir": tmp_path / "bundles",
        },
    )
    lt = LoopThread()

    async def start() -> Agent:
        agent = Agent(cfg)
        await agent.start()
        return agent

    agent = lt.call(start(), timeout=120)
    try:
        health = getattr(agent.service, "health", None)
        if health is None:  # the service keeps no per-source verdicts yet: nothing to send
            pytest.skip("AgentService has no `health` (SourceHealth) yet")
        _record(health, "cam-7", 20, 20, "camera")
        _record(health, "cam-8", 1, 10, "vision")

        def reported() -> dict[str, Any]:
            return controller.ctl.alerts.reports.get(SITE, {})

        got = wait_for(lambda: "cam-8" in reported() and reported(), what="source report")
        assert (got["cam-7"].frames, got["cam-7"].out_of_scope) == (20, 20)
        assert (got["cam-8"].frames, got["cam-8"].out_of_scope, got["cam-8"].last_part) == (
            10,
            1,
            "vision",
        )
        alerts = wait_for(lambda: _alerts(controller), what="the daemon's alert")
        assert [a["message"] for a in alerts] == [
            "source cam-7 at substation-12: 20 of the last 20 frames out of scope (camera)"
        ]
    finally:
        lt.call(agent.stop())
        lt.close()
