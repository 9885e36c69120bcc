"""The site agent daemon (a real ``fleetvl edge run`` process) under a real controller.

Where the edge agent and the control plane meet: the agent registers with the bundle it
started from (by archive address, so the controller does not send it again), a policy change
made at the controller changes the agent's answers, and a bundle assigned at the controller is
downloaded, verified and swapped in by the agent without a restart.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.store import ControllerStore
from fleetvl.vlm.bundle_archive import archive_digest, pack_bundle
from tests.controller_harness import RunningController, new_namespace, wait_for
from tests.edge_harness import start_agent
from tests.helpers import png_bytes, random_image

SITE = "sub-ctl-01"
TOKEN = "agent-token-sub-ctl-01"


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[RunningController]:
    import hashlib

    ns = new_namespace()
    spec = {
        "global_policy": {"deadline_ms": 20000, "min_confidence": 0.0},
        "tenants": {"grid": {}},
        "sites": [{"id": SITE, "tenant": "grid", "kind": "substation",
                   "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}],
    }  # fmt: skip
    rc = RunningController({"namespace": ns, "spec": spec, "bundle_dir": str(tmp_path / "store")})
    yield rc
    rc.close()

    async def drop() -> None:
        store = ControllerStore("redis://127.0.0.1:6379/0", ns)
        await store.drop_all()
        await store.close()

    asyncio.run(drop())


def _ask(url: str, max_tokens: int = 12) -> dict[str, Any]:
    image = base64.b64encode(png_bytes(random_image(56, 56))).decode()
    body = {
        "model": "edge",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
            {"type": "text", "text": "What does the gauge read?"}]}],
    }  # fmt: skip
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _agent_config(rc: RunningController, bundle: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "site": SITE, "tenant": "grid", "bundle": str(bundle), "model": "edge",
        "spool": {"path": str(tmp_path / "spool.sqlite")},
        "controller": {"target": rc.target, "token": TOKEN, "heartbeat_s": 0.5,
                       "bundle_dir": str(tmp_path / "bundles")},
    }  # fmt: skip


def _site(rc: RunningController) -> dict[str, Any]:
    return next(s for s in rc.status()["sites"] if s["id"] == SITE)


def test_agent_daemon_follows_the_controller(
    controller: RunningController,
    fp32_bundle: Path,
    bundle_factory: Callable[[str, str], Path],
    tmp_path: Path,
) -> None:
    rc = controller
    config = _agent_config(rc, fp32_bundle, tmp_path)
    proc, url = start_agent(tmp_path, config)
    try:
        # Registered, running the bundle it started from, which the controller names by the
        # same archive address it would give an upload of that directory.
        started = archive_digest(fp32_bundle)
        wait_for(lambda: _site(rc)["connected"], 30, "agent registered")
        assert _site(rc)["active_bundle"] == started
        assert _ask(url)["usage"]["completion_tokens"] == 12

        # A policy made at the controller reaches the agent's answers.
        with rc.api() as api:
            policy = {"policy": {"max_output_tokens": 3}, "why": "test"}
            api.put(f"/api/policies/site/{SITE}", json=policy).raise_for_status()
        wait_for(lambda: _ask(url)["usage"]["completion_tokens"] == 3, 30, "pushed policy")

        # A bundle assigned at the controller is fetched, verified and swapped in.
        int4 = bundle_factory("qwen2_5_vl", "int4")
        with rc.api() as api:
            up = api.post("/api/bundles?name=int4", content=pack_bundle(int4)).raise_for_status()
            digest = up.json()["digest"]
            assert digest == archive_digest(int4)
            api.put(f"/api/sites/{SITE}/bundle", json={"bundle": "int4"}).raise_for_status()
        wait_for(lambda: _site(rc)["active_bundle"] == digest, 60, "bundle installed")
        int4_manifest = (int4 / "manifest.json").read_text()
        assert httpx.get(url + "/healthz").json()["bundle"] in int4_manifest
        assert _ask(url)["fleetvl"]["served_by"] == "edge"  # answers on the new bundle
    finally:
        proc.stop()


def test_a_restarted_agent_keeps_the_policy_pushed_before_the_controller_went_away(
    controller: RunningController, fp32_bundle: Path, tmp_path: Path
) -> None:
    rc = controller
    config = _agent_config(rc, fp32_bundle, tmp_path)
    proc, url = start_agent(tmp_path, config)
    try:
        with rc.api() as api:
            policy = {"policy": {"max_output_tokens": 3}, "why": "test"}
            api.put(f"/api/policies/site/{SITE}", json=policy).raise_for_status()
        wait_for(lambda: _ask(url)["usage"]["completion_tokens"] == 3, 30, "pushed policy")
    finally:
        proc.stop()
    rc.close()  # the controller is away while the agent restarts
    proc, url = start_agent(tmp_path, {**config, "http_port": None}, "agent-again")
    try:
        answer = _ask(url)
        assert answer["usage"]["completion_tokens"] == 3  # not the file's default of 256
        assert answer["fleetvl"]["policy"]["max_output_tokens"]["set_by"] == "site"
    finally:
        proc.stop()
