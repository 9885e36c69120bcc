"""Bundle downloads from the controller's store (with the agent's credential) and from any
HTTP URL (FakeObjectStore: a fake of an S3-style object store, which must not get it)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.store import ControllerStore
from tests.controller_harness import Agents, RunningController, new_namespace, wait_for
from tests.integration.test_controller_rollouts import digest_of, make_bundle


class FakeObjectStore:
    """Serves fixed objects over HTTP GET, recording each request's headers."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.seen: list[dict[str, str]] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                store.seen.append(dict(self.headers))
                data = store.objects.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{key}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ns = new_namespace()
    v1, v3 = make_bundle(tmp_path, "v1"), make_bundle(tmp_path, "v3")
    s3 = FakeObjectStore({"models/v3.tar": v3})
    spec = {
        "tenants": {"grid": {"bundle": "v1"}},
        "bundles": {
            "v1": {"digest": digest_of(v1)},
            "v3": {"digest": digest_of(v3), "url": s3.url("models/v3.tar")},
        },
        "sites": [
            {
                "id": "sub-001",
                "tenant": "grid",
                "token_sha256": hashlib.sha256(b"tok-1").hexdigest(),
            }
        ],
    }
    rc = RunningController({"namespace": ns, "spec": spec, "bundle_dir": str(tmp_path / "st")})
    with rc.api() as api:
        api.post("/api/bundles", content=v1).raise_for_status()
    try:
        yield {"rc": rc, "s3": s3, "v1": digest_of(v1), "v3": digest_of(v3)}
    finally:
        rc.close()
        s3.close()

        async def drop() -> None:
            store = ControllerStore("redis://127.0.0.1:6379/0", ns)
            await store.drop_all()
            await store.close()

        asyncio.run(drop())


def test_store_needs_a_credential_and_object_store_urls_never_get_it(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    rc, s3 = setup["rc"], setup["s3"]
    url = f"{rc.url}/bundles/{setup['v1']}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer tok-1"}).status_code == 200
    agents = Agents(rc.target, ["sub-001"], tmp_path / "agents", token="tok-1")
    try:
        h = agents.handlers["sub-001"]
        wait_for(lambda: h.active == setup["v1"], what="v1 from the controller's store")
        with rc.api() as api:
            api.put("/api/sites/sub-001/bundle", json={"bundle": "v3"}).raise_for_status()
        wait_for(lambda: h.active == setup["v3"], what="v3 from the object store")
        assert len(s3.seen) == 1
        assert "Authorization" not in s3.seen[0]
    finally:
        agents.close()


def test_agent_that_already_runs_the_bundle_is_not_sent_it(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    from controller.metrics import PUSHES

    rc = setup["rc"]
    bundle_pushes = PUSHES.labels("bundle")._value.get()
    agents = Agents(
        rc.target, ["sub-001"], tmp_path / "agents", token="tok-1", active_bundle=setup["v1"]
    )
    try:
        wait_for(agents.connected, what="registration")
        wait_for(lambda: rc.status()["sites"][0]["in_sync"], what="in sync")
        wait_for(lambda: agents.handlers["sub-001"].last_policy(), what="policies")
        assert agents.handlers["sub-001"].installs == []
        assert PUSHES.labels("bundle")._value.get() == bundle_pushes  # none was even sent
    finally:
        agents.close()
