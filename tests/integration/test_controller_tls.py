"""Mutual TLS on the agents' gRPC port, with certificates made by openssl here."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from controller.store import ControllerStore
from tests.controller_harness import Agents, RunningController, new_namespace, wait_for
from tests.pki import make_pki

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl CLI needed to make test certificates"
)


def test_agents_need_a_client_certificate_under_mtls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, client_cn="sub-001")
    ns = new_namespace()
    rc = RunningController(
        {
            "namespace": ns,
            "bundle_dir": str(tmp_path / "store"),
            "spec": {
                "tenants": {"t": {}},
                "sites": [{"id": "sub-001", "tenant": "t"}, {"id": "sub-002", "tenant": "t"}],
            },
            "tls": {
                "cert_file": str(pki["srv.pem"]),
                "key_file": str(pki["srv.key"]),
                "client_ca_file": str(pki["ca.pem"]),
                "site_identity": True,
            },
        }
    )
    try:
        good = Agents(
            rc.target,
            ["sub-001"],
            tmp_path / "good",
            tls_ca_file=pki["ca.pem"],
            tls_cert_file=pki["cli.pem"],
            tls_key_file=pki["cli.key"],
        )
        plain = Agents(rc.target, ["sub-001"], tmp_path / "plain")
        no_cert = Agents(rc.target, ["sub-001"], tmp_path / "nocert", tls_ca_file=pki["ca.pem"])
        # sub-001's certificate used to register as sub-002.
        other = Agents(
            rc.target,
            ["sub-002"],
            tmp_path / "other",
            tls_ca_file=pki["ca.pem"],
            tls_cert_file=pki["cli.pem"],
            tls_key_file=pki["cli.key"],
        )
        try:
            wait_for(good.connected, what="the agent with a client certificate")
            c2 = other.clients["sub-002"]
            wait_for(lambda: c2.attempts >= 2, what="impersonation attempts")
            assert c2.sessions == 0
            assert c2.last_error.startswith("PERMISSION_DENIED")
            assert "not for site 'sub-002'" in c2.last_error
            wait_for(lambda: good.handlers["sub-001"].last_policy(), what="policies over mTLS")
            for a in (plain, no_cert):
                c = a.clients["sub-001"]
                wait_for(lambda c=c: c.attempts >= 2, what="refused dials")
                assert c.sessions == 0
                assert "UNAVAILABLE" in c.last_error
        finally:
            for a in (good, plain, no_cert, other):
                a.close()
    finally:
        rc.close()

        async def drop() -> None:
            store = ControllerStore("redis://127.0.0.1:6379/0", ns)
            await store.drop_all()
            await store.close()

        asyncio.run(drop())
