"""The Helm chart (helm/fleetvl), rendered and linted by the real Helm engine.

``helm-python-sdk`` binds Helm v4's Go SDK (``libhelm_c``), so these tests run the same
template engine, schema validation and linter as ``helm install`` / ``helm lint``, offline and
without a helm binary or a cluster. Every rendered object is parsed into the ``kubernetes``
client's model of its kind; the RayService is checked as tests/kuberay_rayservice.py explains;
the config files the chart writes are loaded by the services' own config models.
"""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kuberay_rayservice import RAYSERVICE_SCHEMA, k8s_roundtrip

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the `chart` extra")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fleetvl"
RELEASE, NAMESPACE = "fleet", "fleetvl-test"

# Test stand-ins for PEM material: the chart stores it, it never parses it.
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIBtestcert\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEtestkey\n-----END PRIVATE KEY-----\n"
PEM_CA = "-----BEGIN CERTIFICATE-----\nMIIBtestca\n-----END CERTIFICATE-----\n"

REQUIRED = {
    "secrets": {
        "controllerAdminToken": "adm-0123456789abcdef",
        "routerApiKeys": {"sk-test-northgrid": "northgrid", "sk-test-freshmart": "freshmart"},
    },
    "tls": {"cert": PEM_CERT, "key": PEM_KEY, "clientCa": PEM_CA},
}
EXAMPLE_FLEET = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


VALUE_SETS: dict[str, dict[str, Any]] = {
    # The chart's defaults plus only what is required.
    "defaults": REQUIRED,
    # The example fleet, an external Redis and TLS from Secrets someone else manages
    # (cert-manager), custom resources watched, sites restricted by NetworkPolicy.
    "example-fleet-external": {
        "secrets": {"existingSecret": "fleetvl-keys"},
        "tls": {"existingSecret": "fleetvl-tls"},
        "fleet": {"spec": EXAMPLE_FLEET},
        "redis": {
            "mode": "external",
            "external": {"existingSecret": "redis-conn", "existingSecretKey": "url"},
        },
        "controller": {
            "kube": {"enabled": True},
            "publicUrl": "https://fleet.example.net",
            "pdb": {"enabled": True, "minAvailable": 0},
        },
        "networkPolicy": {
            "sites": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            "metricsNamespaceSelector": {"kubernetes.io/metadata.name": "monitoring"},
        },
    },
    # A CPU-only test cluster: no TLS (a terminating proxy in front), nothing persisted,
    # load balancers for the sites, no PDB.
    "cpu-no-tls": _merge(
        {"secrets": REQUIRED["secrets"]},
        {
            "tls": {"enabled": False},
            "router": {
                "replicas": 1,
                "pdb": {"enabled": False},
                "service": {
                    "type": "LoadBalancer",
                    "loadBalancerSourceRanges": ["203.0.113.0/24"],
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                },
            },
            "controller": {"persistence": {"enabled": False}, "service": {"type": "LoadBalancer"}},
            "redis": {"bundled": {"persistence": {"enabled": False}, "maxmemory": "512mb"}},
            "cloudWorker": {
                "gpusPerReplica": 0,
                "workers": {
                    "groupName": "cpu",
                    "resources": {"requests": {"cpu": "4", "memory": "8Gi"}},
                    "tolerations": [],
                },
            },
            "networkPolicy": {"enabled": False},
        },
    ),
    # mTLS on every router client, a large GPU pool with the model on a shared volume, an
    # external Redis given as a plain URL (so the cloud worker uses it too), a 71-character
    # name to trim, extra labels and backends.
    "mtls-gpu-scale": _merge(
        REQUIRED,
        {
            "fullnameOverride": "fleetvl-production-eu-west-1-cloud-tier-"
            "with-a-much-longer-name-than-63",
            "commonLabels": {"team": "vision-platform"},
            "imagePullSecrets": [{"name": "regcred"}],
            "fleet": {"spec": EXAMPLE_FLEET},
            "tls": {"router": {"clientAuth": True}},
            "redis": {"mode": "external", "external": {"url": "rediss://cache.internal:6380/2"}},
            "router": {
                "replicas": 4,
                "extraEnv": [{"name": "FLEETVL_LOG_LEVEL", "value": "debug"}],
                "extraBackends": [
                    {
                        "name": "cloud-us",
                        "type": "grpc",
                        "target": "fleetvl-us.example.net:9000",
                        "slots": 8,
                        "models": ["fleet-cloud"],
                    }
                ],
            },
            "cloudWorker": {
                "model": {"existingClaim": "qwen-weights", "dir": "/models/qwen2.5-vl-72b"},
                "autoscaling": {"minReplicas": 2, "maxReplicas": 16, "targetOngoingRequests": 6},
                "gpusPerReplica": 2,
                "workers": {
                    "maxReplicas": 8,
                    "minReplicas": 1,
                    "resources": {
                        "requests": {"cpu": "16", "memory": "160Gi", "nvidia.com/gpu": 4},
                        "limits": {"cpu": "16", "memory": "160Gi", "nvidia.com/gpu": 4},
                    },
                    "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                    "rayStartParams": {"object-store-memory": "10000000000"},
                },
            },
        },
    ),
}

# (values over the defaults, text the error must contain): what a user sees for a bad value.
BAD_VALUES = [
    (
        {"redis": {"bundled": {"maxmemoryPolicy": "noeviction"}}},
        "at '/redis/bundled/maxmemoryPolicy': value must be one of 'volatile-lru'",
    ),
    # allkeys-* could evict the controller's hard state, which shares this Redis.
    (
        {"redis": {"bundled": {"maxmemoryPolicy": "allkeys-lru"}}},
        "at '/redis/bundled/maxmemoryPolicy': value must be one of",
    ),
    ({"router": {"replicas": 0}}, "at '/router/replicas': minimum: got 0, want 1"),
    ({"router": {"replics": 3}}, "at '/router': additional properties 'replics' not allowed"),
    ({"cloudWorker": {"gpusPerReplica": "one"}}, "at '/cloudWorker/gpusPerReplica': got string"),
    ({"redis": {"mode": "sentinel"}}, "at '/redis/mode': value must be one of 'bundled'"),
    (
        {"fleet": {"spec": {"sites": [{"id": "Bad Site!", "tenant": "northgrid"}]}}},
        "at '/fleet/spec/sites/0/id'",
    ),
    (
        {"secrets": {"controllerAdminToken": "", "routerApiKeys": {}}},
        "secrets.controllerAdminToken is required",
    ),
    # null deletes a key in Helm: the user gave no API keys at all.
    ({"secrets": {"routerApiKeys": None}}, "secrets.routerApiKeys is required"),
    ({"tls": {"cert": ""}}, "tls.cert is required with tls.enabled"),
    ({"tls": {"clientCa": ""}}, "tls.clientCa is required when tls.controller.clientAuth"),
    (
        {"redis": {"mode": "external"}},
        "redis.external.url is required with redis.mode=external",
    ),
    (
        {"cloudWorker": {"enabled": False}},
        "the router has no backend",
    ),
]


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(str(CHART)) as c:
        yield c


def _render(chart: Any, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def _objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    objs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        objs.extend(d for d in yaml.safe_load_all(text) if d)
    return objs


@pytest.fixture(scope="module")
def rendered(chart: Any) -> dict[str, list[dict[str, Any]]]:
    return {name: _objects(_render(chart, v)) for name, v in VALUE_SETS.items()}


def _one(objs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, got {[o['metadata'] for o in found]}"
    return found[0]


def _kinds(objs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in objs:
        out[o["kind"]] = out.get(o["kind"], 0) + 1
    return out


# --- rendering and lint -------------------------------------------------------------------


def test_defaults_render_the_whole_cloud_tier(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = _kinds(rendered["defaults"])
    assert kinds == {
        "ConfigMap": 3,  # router.yaml, controller.yaml, fleet.yaml
        "Deployment": 2,  # router, controller
        "NetworkPolicy": 4,  # router, controller, redis, ray pods
        "PersistentVolumeClaim": 1,  # the controller's bundle store
        "PodDisruptionBudget": 1,  # the router's
        "RayService": 1,
        "Secret": 2,  # keys, TLS
        "Service": 3,  # router, controller, redis
        "ServiceAccount": 1,
        "StatefulSet": 1,  # redis
    }


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_value_set_renders_with_the_options_it_asks_for(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objs = rendered[name]
    kinds = _kinds(objs)
    if name == "example-fleet-external":
        assert "StatefulSet" not in kinds
        assert "Secret" not in kinds
        assert kinds["Role"] == kinds["RoleBinding"] == 1  # to watch the custom resources
        assert kinds["PodDisruptionBudget"] == 2
        ctl = _one(objs, "Deployment", "-controller")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in ctl["containers"][0]["env"]}
        assert env["FLEETVL_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "redis-conn",
            "key": "url",
        }
        assert ctl["automountServiceAccountToken"] is True
        vols = {v["name"]: v for v in ctl["volumes"]}
        assert vols["tls"]["secret"]["secretName"] == "fleetvl-tls"
        rules = _one(objs, "NetworkPolicy", "-router")["spec"]["ingress"][0]["from"]
        assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in rules
    elif name == "cpu-no-tls":
        assert "PodDisruptionBudget" not in kinds
        assert "NetworkPolicy" not in kinds
        assert "PersistentVolumeClaim" not in kinds
        redis = _one(objs, "StatefulSet", "-redis")
        assert "volumeClaimTemplates" not in redis["spec"]
        args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--appendonly") + 1] == "no"
        assert args[args.index("--maxmemory") + 1] == "512mb"
        svc = _one(objs, "Service", "-router")["spec"]
        assert svc["type"] == "LoadBalancer"
        assert svc["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
        probe = _one(objs, "Deployment", "-router")["spec"]["template"]["spec"]["containers"][0]
        assert probe["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
        rs = _one(objs, "RayService", "-cloud")
        serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
        assert "num_gpus" not in serve["applications"][0]["deployments"][0]["ray_actor_options"]
    elif name == "mtls-gpu-scale":
        for o in objs:
            assert o["metadata"]["labels"]["team"] == "vision-platform"
        router = _one(objs, "Deployment", "-router")["spec"]["template"]["spec"]
        # The kubelet has no client certificate: probes fall back to TCP checks.
        assert "tcpSocket" in router["containers"][0]["readinessProbe"]
        assert router["imagePullSecrets"] == [{"name": "regcred"}]
    else:
        assert name == "defaults"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_passes(name: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [], report
    assert problems == [], report


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    """The linter is live: a template with a syntax error is reported, not ignored."""
    import shutil

    broken = tmp_path / "fleetvl"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.router.replicas \n")
    report = helm.lint(str(broken), REQUIRED, strict=True)
    assert any("broken.yaml" in m["error"] for m in report["messages"] if m["severity"] == 3)


# --- every field real ---------------------------------------------------------------------


def _nulls(v: Any, path: str = "") -> list[str]:
    if v is None:
        return [path or "/"]
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _nulls(x, f"{path}/{k}")]
    if isinstance(v, list):
        return [p for i, x in enumerate(v) for p in _nulls(x, f"{path}/{i}")]
    return []


def _embedded_documents(o: dict[str, Any]) -> dict[str, Any]:
    """Config files the chart writes inside objects, parsed (they must be null-free too)."""
    docs: dict[str, Any] = {}
    if o["kind"] == "ConfigMap":
        docs.update({k: yaml.safe_load(v) for k, v in o["data"].items()})
    if o["kind"] == "Secret" and "api-keys.yaml" in o.get("stringData", {}):
        docs["api-keys.yaml"] = yaml.safe_load(o["stringData"]["api-keys.yaml"])
    if o["kind"] == "RayService":
        docs["serveConfigV2"] = yaml.safe_load(o["spec"]["serveConfigV2"])
    return docs


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_rendered_field_is_null(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    found = []
    for o in rendered[name]:
        where = f"{o['kind']}/{o['metadata']['name']}"
        found += [f"{where}{p}" for p in _nulls(o)]
        for doc, parsed in _embedded_documents(o).items():
            found += [f"{where}[{doc}]{p}" for p in _nulls(parsed)]
    assert found == []


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_names_are_dns_labels(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered[name]]
    assert len(keys) == len(set(keys)), "two objects of one kind share a name after trimming"
    for o in rendered[name]:
        n = o["metadata"]["name"]
        assert len(n) <= 63, f"{o['kind']} name {n!r}"
        assert label.match(n), f"{o['kind']} name {n!r}"
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


# --- Kubernetes models --------------------------------------------------------------------


def _model_name(o: dict[str, Any]) -> str:
    version = o["apiVersion"].split("/")[-1]
    return f"{version[0].upper()}{version[1:]}{o['kind']}"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_object_parses_into_its_kubernetes_model(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    checked = 0
    for o in rendered[name]:
        if o["kind"] == "RayService":
            continue  # a custom resource: test_rayservice_is_what_kuberay_accepts
        parsed, original, back = k8s_roundtrip(o, _model_name(o))
        assert type(parsed).__name__ == _model_name(o)
        assert back == original, f"{o['kind']}/{o['metadata']['name']} lost or changed fields"
        checked += 1
    assert checked >= 10


def test_crds_parse_and_match_the_examples(chart: Any) -> None:
    crds = chart.crds
    assert [c["filename"] for c in crds] == ["fleetvl/crds/fleetvl.io.yaml"]
    docs = [d for c in crds for d in yaml.safe_load_all(c["data"]) if d]
    assert {d["spec"]["names"]["kind"] for d in docs} == {"EdgeSite", "SlaPolicy"}
    for d in docs:
        _, original, back = k8s_roundtrip(d, "V1CustomResourceDefinition")
        assert back == original
    # The controller's docs and tests use examples/kube/crds.yaml: the two must not drift.
    assert crds[0]["data"] == (ROOT / "examples" / "kube" / "crds.yaml").read_text()


def test_roundtrip_catches_a_misspelt_field() -> None:
    """The model check is live: a field the API server would prune fails the comparison."""
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "readinesProbe": {"tcpSocket": {}}}]},
            },
        },
    }
    _, original, back = k8s_roundtrip(dep, "V1Deployment")
    assert back != original
    with pytest.raises(ValueError, match="containers"):
        k8s_roundtrip({"apiVersion": "v1", "kind": "PodSpec"}, "V1PodSpec")


# --- wiring: what refers to what ----------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_references_resolve(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Services select pods, ports exist, mounted ConfigMaps/Secrets and their keys exist."""
    objs = rendered[name]
    values = VALUE_SETS[name]
    external = {
        values.get("secrets", {}).get("existingSecret"),
        values.get("tls", {}).get("existingSecret"),
        values.get("redis", {}).get("external", {}).get("existingSecret"),
    } - {None}
    maps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    secrets = {o["metadata"]["name"]: o["stringData"] for o in objs if o["kind"] == "Secret"}
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    for w in workloads:
        tpl = w["spec"]["template"]
        assert w["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()
        for v in tpl["spec"].get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in maps
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
            if "secret" in v and v["secret"]["secretName"] not in external:
                keys = secrets[v["secret"]["secretName"]]
                assert all(i["key"] in keys for i in v["secret"].get("items", []))
        for c in tpl["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in external:
                    assert ref["key"] in secrets[ref["name"]]
            if "args" in c and "--config" in c["args"]:
                cfg = Path(c["args"][c["args"].index("--config") + 1])
                mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(cfg.parent))
                vol = next(v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"])
                assert cfg.name in maps[vol["configMap"]["name"]]
    for svc in (o for o in objs if o["kind"] == "Service"):
        sel = svc["spec"]["selector"].items()
        pods = [w for w in workloads if sel <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, svc["metadata"]["name"]
        names = {p["name"] for c in pods[0]["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}  # fmt: skip
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_configs_load_in_the_services(
    name: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """router.yaml, controller.yaml and fleet.yaml are accepted by the services' own models."""
    from controller.config import ControllerConfig
    from controller.spec import FleetSpec
    from router.config import RouterConfig

    objs = rendered[name]
    router_yaml = _one(objs, "ConfigMap", "-router")["data"]["router.yaml"]
    # Loaded as the pod loads it: the file, then the environment the Deployment sets.
    (tmp_path / "router.yaml").write_text(router_yaml)
    pod = _one(objs, "Deployment", "-router")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: "redis://r:6379/0" if e["name"] == "FLEETVL_REDIS_URL" else "tok"
           for e in pod["env"]}  # fmt: skip
    router = RouterConfig.load(tmp_path / "router.yaml", environ=env)
    assert router.redis_url == "redis://r:6379/0"
    assert (router.tls is not None) == VALUE_SETS[name].get("tls", {}).get("enabled", True)

    ctl_raw = yaml.safe_load(_one(objs, "ConfigMap", "-controller")["data"]["controller.yaml"])
    ctl = ControllerConfig.model_validate({**ctl_raw, "admin_token": "t" * 16})
    # Agents are sent this URL for bundle downloads: never the listener's 0.0.0.0.
    public = VALUE_SETS[name].get("controller", {}).get("publicUrl")
    ctl_svc = _one(objs, "Service", "-controller")["metadata"]["name"]
    assert ctl.public_url == (public or f"http://{ctl_svc}.{NAMESPACE}.svc:8090")
    fleet = FleetSpec.model_validate(
        yaml.safe_load(_one(objs, "ConfigMap", "-fleet")["data"]["fleet.yaml"])
    )
    # The controller reads the spec where the ConfigMap is mounted.
    ctl_pod = _one(objs, "Deployment", "-controller")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in ctl_pod["containers"][0]["volumeMounts"]}
    assert str(Path(ctl.spec_file or "").parent) in mounts
    assert ctl.bundle_dir in mounts

    # The router takes policies and sites from the controller's gRPC Service (the one owner);
    # the policies rendered from the spec are what it starts with.
    assert router.controller is not None
    assert router.controller.target == f"{ctl_svc}:{ctl.grpc_port}"
    assert router.controller.token.get_secret_value() == "tok"
    assert (router.controller.tls_ca_file is not None) == (router.tls is not None)
    assert not [b for b in router.backends if b.type == "agent"]
    spec = VALUE_SETS[name].get("fleet", {}).get("spec")
    if spec:
        assert fleet.model_dump(exclude_unset=True) == FleetSpec.model_validate(spec).model_dump(
            exclude_unset=True
        )
        sites_with_policy = {s["id"] for s in spec["sites"] if s.get("policy")}
        assert set(router.policies.sites) == sites_with_policy
        assert router.policies.sites["sub-leeds-01"].residency == "edge_only"


# --- the cloud worker's RayService --------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rayservice_is_what_kuberay_accepts(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with the dev extra")
    serve_schema = pytest.importorskip("ray.serve.schema", reason="Ray is in the `cloud` extra")

    rs = _one(rendered[name], "RayService", "-cloud")
    jsonschema.validate(rs, RAYSERVICE_SCHEMA)
    cluster = rs["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    for t in templates:
        _, original, back = k8s_roundtrip(t, "V1PodTemplateSpec")
        assert back == original
    _, original, back = k8s_roundtrip(rs["spec"]["serveService"], "V1Service")
    assert back == original

    # serveConfigV2 is valid for Ray Serve and is the application cloud_worker ships.
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    serve_schema.ServeDeploySchema.model_validate(serve)
    shipped = yaml.safe_load((ROOT / "cloud_worker" / "serve_config.yaml").read_text())
    app, ref = serve["applications"][0], shipped["applications"][0]
    assert (app["name"], app["import_path"]) == (ref["name"], ref["import_path"])
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in ref["deployments"]]
    assert (
        serve["grpc_options"]["grpc_servicer_functions"]
        == (shipped["grpc_options"]["grpc_servicer_functions"])
    )
    # Every argument is one VLMWorker takes (build_app binds them as keyword arguments).
    from cloud_worker.serve_app import VLMWorker

    params = inspect.signature(VLMWorker.func_or_class.__init__).parameters
    assert set(app["args"]) <= set(params) - {"self"}

    # GPUs: each replica's share fits in a worker pod; autoscaling bounds pass through.
    values = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), VALUE_SETS[name])
    dep = app["deployments"][0]
    cw = values["cloudWorker"]
    assert dep["autoscaling_config"]["max_replicas"] == cw["autoscaling"]["maxReplicas"]
    assert dep["autoscaling_config"]["min_replicas"] == cw["autoscaling"]["minReplicas"]
    worker = cluster["workerGroupSpecs"][0]
    assert (worker["minReplicas"], worker["maxReplicas"]) == (
        cw["workers"]["minReplicas"],
        cw["workers"]["maxReplicas"],
    )
    pod_gpus = int(worker["template"]["spec"]["containers"][0]["resources"]
                   .get("limits", {}).get("nvidia.com/gpu", 0))  # fmt: skip
    assert dep["ray_actor_options"].get("num_gpus", 0) <= pod_gpus

    # The router's cloud backend dials the Serve gRPC proxy's Service.
    router = yaml.safe_load(_one(rendered[name], "ConfigMap", "-router")["data"]["router.yaml"])
    cloud = next(b for b in router["backends"] if b["name"] == "cloud")
    svc = rs["spec"]["serveService"]
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert cloud["target"] == f"{svc['metadata']['name']}:{grpc_port}"
    assert grpc_port == serve["grpc_options"]["port"]


def test_kuberay_schema_refuses_what_the_operator_would(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The transcribed schema is live: integer ray-start params and unknown fields fail."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with the dev extra")
    rs = _one(rendered["defaults"], "RayService", "-cloud")
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(bad, RAYSERVICE_SCHEMA)
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(bad, RAYSERVICE_SCHEMA)


# --- values: schema and documentation -----------------------------------------------------


@pytest.mark.parametrize(("over", "message"), BAD_VALUES)
def test_bad_value_is_refused_with_a_readable_message(
    chart: Any, over: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError) as err:
        _render(chart, _merge(REQUIRED, over))
    assert message in str(err.value)
    assert "goroutine" not in str(err.value)  # a message, not a Go stack trace


def test_schema_refuses_bad_values_before_any_template_runs(chart: Any) -> None:
    """`validate_schema` (what `helm install` runs first) names the key and the constraint."""
    with pytest.raises(helm.HelmValuesError, match="/controller/httpPort"):
        chart.validate_schema(_merge(REQUIRED, {"controller": {"httpPort": 70000}}))
    chart.validate_schema(REQUIRED)


def _leaves(v: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(v, dict) and v:
        return [p for k, x in v.items() for p in _leaves(x, (*path, k))]
    return [path]


def test_every_value_is_typed_and_described_in_the_schema(chart: Any) -> None:
    schema = chart.schema
    assert schema is not None
    for path in _leaves(chart.values):
        node, described = schema, []
        for key in path:
            props = node.get("properties", {})
            if key in props:
                node = props[key]
            elif isinstance(node.get("additionalProperties"), dict):
                node = node["additionalProperties"]  # free-form maps (resources, selectors)
            else:
                break
            described.append("description" in node)
        assert described, f"{'.'.join(path)} is not in values.schema.json"
        assert described[0], f"{'.'.join(path)} is not described in values.schema.json"
        assert any(described), f"{'.'.join(path)} has no description"


def test_every_value_is_documented_in_values_yaml() -> None:
    """Each key that holds a value has a comment right above it, or sits inside a block
    documented as a whole (a `# -- ` comment above the block's header, e.g. resources)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    headers: list[tuple[int, bool]] = []  # (indent, documented as a whole) of open blocks
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w./-]*):\s*(\S.*)?$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(3)
        while headers and headers[-1][0] >= indent:
            headers.pop()
        j = i
        while j > 0 and lines[j - 1].strip().startswith("#"):
            j -= 1  # to the first line of the comment block above the key
        commented = j < i
        if not value or value.startswith("#"):
            headers.append((indent, commented and lines[j].strip().startswith("# -- ")))
            continue
        if not (commented or any(whole for _, whole in headers)):
            undocumented.append(f"line {i + 1}: {m.group(2)}")
    assert undocumented == []


def test_notes_tell_where_things_listen_and_warn_about_unreachable_bundle_urls(
    chart: Any,
) -> None:
    notes = _render(chart, REQUIRED)["fleetvl/templates/NOTES.txt"]
    assert f"svc/{RELEASE}-fleetvl-router 8080" in notes
    assert f"svc/{RELEASE}-fleetvl-controller 8090" in notes
    assert "curl -k https://127.0.0.1:8080/readyz" in notes
    assert "controller.publicUrl is not set" in notes
    assert "Sites declared in the fleet spec: 0." in notes
    values = VALUE_SETS["example-fleet-external"]
    notes = _render(chart, values)["fleetvl/templates/NOTES.txt"]
    assert "controller.publicUrl is not set" not in notes
    assert f"Sites declared in the fleet spec: {len(EXAMPLE_FLEET['sites'])}." in notes


def test_packaged_chart_renders_like_the_source(chart: Any, tmp_path: Path) -> None:
    """`helm package` keeps what an install needs (templates, schema, CRDs; .helmignore)."""
    archive = Path(helm.package(str(CHART), destination=str(tmp_path)))
    assert archive.name == "fleetvl-0.1.0.tgz"
    with helm.Chart.load_archive(archive.read_bytes()) as packed:
        assert packed.schema == chart.schema
        assert [c["data"] for c in packed.crds] == [c["data"] for c in chart.crds]
        assert _render(packed, REQUIRED) == _render(chart, REQUIRED)
