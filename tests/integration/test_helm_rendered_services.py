"""The router and controller pods as the chart renders them, run as real processes here.

Each Deployment's ConfigMaps and Secrets are written where its volumeMounts put them (under a
temporary root instead of ``/``), its environment is taken from the pod spec (secretKeyRefs
resolved from the rendered Secrets, the Redis URL pointed at the local Redis), and its
container ``args`` are run with the ``fleetvl`` console script. Then the probes the chart
declares must pass, and the API keys, admin token, TLS certificates and fleet spec the chart
wired in must work: the closest we get to ``helm install`` without a cluster.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.controller_harness import wait_for
from tests.pki import make_pki
from tests.redis_servers import free_port

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the `chart` extra")
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl CLI needed to make test certificates"
)

ROOT = Path(__file__).resolve().parents[2]
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
ADMIN = "adm-0123456789abcdef"
KEYS = {"sk-test-northgrid": "northgrid", "sk-test-freshmart": "freshmart"}
FLEET = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())


def _pki(d: Path) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1, as PEM text (``ca.pem`` stays in ``d``)."""
    p = make_pki(d)
    return {"ca.crt": p["ca.pem"].read_text(), "srv.crt": p["srv.pem"].read_text(),
            "srv.key": p["srv.key"].read_text()}  # fmt: skip


class Pod:
    """One rendered Deployment's container, materialized under ``root`` and started."""

    def __init__(self, objs: list[dict[str, Any]], component: str, root: Path) -> None:
        dep = next(
            o
            for o in objs
            if o["kind"] == "Deployment" and o["metadata"]["name"].endswith(f"-{component}")
        )
        self.spec = dep["spec"]["template"]["spec"]
        self.container = self.spec["containers"][0]
        self.root = root
        maps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
        self.secrets = {
            o["metadata"]["name"]: o["stringData"] for o in objs if o["kind"] == "Secret"
        }
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        for m in self.container["volumeMounts"]:
            where = self._path(m["mountPath"])
            where.mkdir(parents=True, exist_ok=True)
            v = volumes[m["name"]]
            files: dict[str, str] = {}
            if "configMap" in v:
                files = maps[v["configMap"]["name"]]
            elif "secret" in v:
                data = self.secrets[v["secret"]["secretName"]]
                items = v["secret"].get("items")
                files = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
            for name, text in files.items():
                (where / name).write_text(self._localize(text))
        self.ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.proc: subprocess.Popen[bytes] | None = None

    def _path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def _localize(self, text: str) -> str:
        # Mount paths move under the temporary root; servers bind loopback only here.
        for prefix in ("/etc/fleetvl", "/var/lib/fleetvl"):
            text = text.replace(prefix, str(self._path(prefix)))
        # No cluster DNS here: the controller's Service is this machine.
        text = text.replace("fleet-fleetvl-controller:", "127.0.0.1:")
        return text.replace("0.0.0.0", "127.0.0.1")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
        env["FLEETVL_REDIS_URL"] = LOCAL_REDIS  # the bundled Redis's Service is not here
        return env

    def start(self) -> Pod:
        fleetvl = str(Path(sys.executable).with_name("fleetvl"))
        args = [self._localize(a) for a in self.container["args"]]
        self.proc = subprocess.Popen(
            [fleetvl, *args], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        return self

    def stop(self) -> str:
        assert self.proc is not None
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.decode(errors="replace")

    def probe_url(self, probe: str) -> str:
        get = self.container[probe]["httpGet"]
        scheme = get.get("scheme", "HTTP").lower()
        return f"{scheme}://127.0.0.1:{self.ports[get['port']]}{get['path']}"

    def wait_ready(self, client: httpx.Client) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.stop()}")
            try:
                return client.get(self.probe_url("readinessProbe")).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=60, what=f"{self.container['name']} readiness probe")


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(ROOT / "helm" / "fleetvl")) as chart:
        manifests = chart.render(values=values, name="fleet", namespace="fleetvl")
    return [
        d
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"helmtest-{uuid.uuid4().hex[:10]}"
    yield ns
    r = redis.Redis.from_url(LOCAL_REDIS)
    for k in r.scan_iter(f"fleetvl:ctl:{ns}:*"):
        r.delete(k)


def test_rendered_router_and_controller_start_and_serve(tmp_path: Path, namespace: str) -> None:
    pki = _pki(tmp_path)
    values = {
        "secrets": {"controllerAdminToken": ADMIN, "routerApiKeys": KEYS},
        "tls": {"cert": pki["srv.crt"], "key": pki["srv.key"], "clientCa": pki["ca.crt"]},
        "fleet": {"spec": FLEET},
        "router": {"httpPort": free_port(), "grpcPort": free_port()},
        "controller": {"httpPort": free_port(), "grpcPort": free_port(), "namespace": namespace},
    }
    objs = _render(values)
    root = tmp_path / "root"
    router = Pod(objs, "router", root).start()
    controller = Pod(objs, "controller", root).start()
    try:
        # The router serves HTTPS with the chart's certificate (verified against our CA).
        ca = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(verify=ca, timeout=5) as tls_client:
            router.wait_ready(tls_client)
            assert router.probe_url("livenessProbe").startswith("https://")
            models = router.probe_url("readinessProbe").replace("/readyz", "/v1/models")
            ok = tls_client.get(models, headers={"Authorization": "Bearer sk-test-freshmart"})
            assert ok.status_code == 200, ok.text
            assert "fleet-cloud" in ok.text
            bad = tls_client.get(models, headers={"Authorization": "Bearer sk-wrong"})
            assert bad.status_code == 401
        # The controller's admin API: the token from the Secret, the sites from the ConfigMap.
        with httpx.Client(timeout=5) as client:
            controller.wait_ready(client)
            status_url = controller.probe_url("readinessProbe").replace("/healthz", "/api/status")
            assert client.get(status_url).status_code == 401
            status = client.get(status_url, headers={"Authorization": f"Bearer {ADMIN}"})
            assert status.status_code == 200, status.text
            assert {s["id"] for s in FLEET["sites"]} <= set(_site_ids(status.json()))
            # The router watches the controller over its mTLS port (the chart's certificate
            # as client certificate, the admin token from the Secret): policy has one owner.
            metrics = router.probe_url("readinessProbe").replace("/readyz", "/metrics")
            watching = "fleetvl_router_controller_connected 1.0"
            with httpx.Client(verify=ca, timeout=5) as tls_client:
                wait_for(lambda: watching in tls_client.get(metrics).text, what="router watch")
    finally:
        router_log, controller_log = router.stop(), controller.stop()
    assert f"HTTP listening on 127.0.0.1:{values['router']['httpPort']}" in router_log
    # The controller logs one JSON line per admin request.
    assert "/api/status" in controller_log, controller_log[-2000:]


def _site_ids(status: dict[str, Any]) -> list[str]:
    sites = status["sites"]
    if isinstance(sites, dict):
        return list(sites)
    return [s.get("id") or s.get("site") for s in sites]


def _docs_site_certificate(d: Path) -> None:
    """Run docs/edge_install.md's openssl commands (the site CA, then sub-leeds-01's pair)."""
    doc = (ROOT / "docs" / "edge_install.md").read_text()
    section = doc[doc.index("## 3. mTLS material") :]
    script = section[section.index("```bash") + len("```bash") : section.index("```\n", 10)]
    assert "openssl x509 -req" in script
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=d, check=True, timeout=60,
                   capture_output=True)  # fmt: skip


def test_agent_with_the_docs_certificate_registers_with_the_rendered_controller(
    tmp_path: Path, namespace: str
) -> None:
    """The chart's controller requires mTLS with site identity; a certificate made exactly as
    docs/edge_install.md says is accepted for its site and receives the fleet spec's policy."""
    from tests.controller_harness import Agents

    pki = _pki(tmp_path)  # the server side: a certificate for 127.0.0.1 and its CA
    site_pki = tmp_path / "site"
    site_pki.mkdir()
    _docs_site_certificate(site_pki)
    values = {
        "secrets": {"controllerAdminToken": ADMIN, "routerApiKeys": KEYS},
        "tls": {
            "cert": pki["srv.crt"],
            "key": pki["srv.key"],
            "clientCa": (site_pki / "fleet-ca.crt").read_text(),
        },
        "fleet": {"spec": FLEET},
        "controller": {"httpPort": free_port(), "grpcPort": free_port(), "namespace": namespace},
    }
    controller = Pod(_render(values), "controller", tmp_path / "root").start()
    agents = None
    try:
        with httpx.Client(timeout=5) as client:
            controller.wait_ready(client)
        agents = Agents(
            f"127.0.0.1:{controller.ports['grpc']}",
            ["sub-leeds-01"],
            tmp_path / "agent",
            tls_ca_file=tmp_path / "ca.pem",
            tls_cert_file=site_pki / "site.crt",
            tls_key_file=site_pki / "site.key",
        )
        wait_for(agents.connected, timeout=30, what="the agent's mTLS session")
        policy = wait_for(agents.handlers["sub-leeds-01"].last_policy, what="pushed policies")
        assert policy["site"]["residency"] == "edge_only"  # from the chart's fleet ConfigMap
    finally:
        if agents is not None:
            agents.close()
        log = controller.stop()
    assert "sub-leeds-01" in log
