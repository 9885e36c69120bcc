"""The agent's outbound connection and escalations over mutual TLS to a real router."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import httpx
import pytest

from tests.edge_harness import start_agent, wait_for
from tests.helpers import png_bytes, random_image
from tests.pki import make_pki
from tests.router_harness import RunningRouter

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl CLI needed to make test certificates"
)


def test_agent_connects_and_escalates_over_mtls(fp32_bundle: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    cfg = {
        "tls": {"cert_file": str(pki["srv.pem"]), "key_file": str(pki["srv.key"]),
                "client_ca_file": str(pki["ca.pem"])},
        "backends": [
            {"name": "cloud", "type": "simulated", "simulated": {"answer": "cloud"}},
            {"name": "site-agent", "type": "agent", "site": "s1"},
        ],
    }  # fmt: skip
    with RunningRouter(cfg) as router:
        link = {"target": router.grpc_target, "model": "cloud", "backoff_s": 0.05,
                "max_backoff_s": 0.3, "tls_ca_file": str(pki["ca.pem"])}  # fmt: skip
        base = {"site": "s1", "bundle": str(fp32_bundle), "model": "edge",
                "gate": {"threshold_source": "raw"}}  # fmt: skip
        # Without a client certificate the router refuses the connection: never up.
        anon, anon_url = start_agent(
            tmp_path, {**base, "router": link, "spool": {"path": str(tmp_path / "a.db")}}, "anon"
        )
        try:
            with pytest.raises(TimeoutError):
                wait_for(lambda: httpx.get(anon_url + "/healthz").json()["uplink"] == "up", 2)
        finally:
            anon.stop()
        mtls = {**link, "tls_cert_file": str(pki["cli.pem"]), "tls_key_file": str(pki["cli.key"])}
        proc, url = start_agent(
            tmp_path, {**base, "router": mtls, "spool": {"path": str(tmp_path / "m.db")}}, "mtls"
        )
        try:
            wait_for(lambda: httpx.get(url + "/healthz").json()["uplink"] == "up", 30, "uplink")
            img = base64.b64encode(png_bytes(random_image(56, 56))).decode()
            body = {"model": "edge", "max_tokens": 4, "sla": {"min_confidence": 0.99},
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}},
                        {"type": "text", "text": "?"}]}]}  # fmt: skip
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()
            assert r["fleetvl"]["served_by"] == "cloud"
        finally:
            proc.stop()
