"""TLS and mutual TLS on both router listeners, with certificates made by openssl here."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import grpc
import httpx
import pytest

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from tests.pki import make_pki
from tests.router_harness import RunningRouter

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl CLI needed to make test certificates"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _config(pki: dict[str, Path], mutual: bool) -> dict:
    tls = {"cert_file": str(pki["srv.pem"]), "key_file": str(pki["srv.key"])}
    if mutual:
        tls["client_ca_file"] = str(pki["ca.pem"])
    return {
        "tls": tls,
        "backends": [{"name": "sim", "type": "simulated", "models": ["fleet-sim"]}],
    }


def _grpc_generate(target: str, creds: grpc.ChannelCredentials) -> str:
    async def go() -> str:
        async with grpc.aio.secure_channel(target, creds) as ch:
            req = pb.GenerateRequest(
                model="fleet-sim",
                messages=[pb.Message(role="user", content=[pb.ContentPart(text="hi")])],
            )
            chunks = [c async for c in pb_grpc.RouterStub(ch).Generate(req, timeout=10)]
            return chunks[-1].final.text

    return asyncio.run(go())


def test_tls_on_http_and_grpc(pki: dict[str, Path]) -> None:
    with RunningRouter(_config(pki, mutual=False)) as r:
        https = r.url.replace("http://", "https://")
        assert httpx.get(https + "/healthz", verify=str(pki["ca.pem"])).status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown CA is refused
            httpx.get(https + "/healthz")
        creds = grpc.ssl_channel_credentials(pki["ca.pem"].read_bytes())
        assert _grpc_generate(r.grpc_target, creds)


def test_mutual_tls_requires_a_client_certificate(pki: dict[str, Path]) -> None:
    with RunningRouter(_config(pki, mutual=True)) as r:
        https = r.url.replace("http://", "https://")
        # TLS 1.3 refuses after the handshake: the client sees the connection dropped.
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(https + "/healthz", verify=str(pki["ca.pem"]))
        ctx = ssl.create_default_context(cafile=str(pki["ca.pem"]))
        ctx.load_cert_chain(str(pki["cli.pem"]), str(pki["cli.key"]))
        assert httpx.get(https + "/healthz", verify=ctx).status_code == 200
        no_cert = grpc.ssl_channel_credentials(pki["ca.pem"].read_bytes())
        with pytest.raises(grpc.aio.AioRpcError):
            _grpc_generate(r.grpc_target, no_cert)
        with_cert = grpc.ssl_channel_credentials(
            pki["ca.pem"].read_bytes(), pki["cli.key"].read_bytes(), pki["cli.pem"].read_bytes()
        )
        assert _grpc_generate(r.grpc_target, with_cert)
