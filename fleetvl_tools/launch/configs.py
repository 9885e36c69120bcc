"""Config files for every component of ``fleetvl up``, generated from the fleet spec.

One model name (``fleet-demo``) everywhere; the router learns the SLA layers of the spec; each
bundle of the spec points at the demo INT4 bundle's archive digest, so the controller sees
every agent already running what it assigns (no downloads); declared rollouts are left out
(they need a second bundle).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

import yaml

from fleetvl_tools.launch.config import UpConfig

__all__ = ["MODEL", "FleetPlan", "FleetSpecFile", "SitePlan", "plan_fleet"]

MODEL = "fleet-demo"
ROOT = Path(__file__).resolve().parents[2]


class SpecSite(TypedDict):
    id: str
    tenant: str
    kind: NotRequired[str]
    policy: NotRequired[dict[str, object] | None]


class SpecTenant(TypedDict, total=False):
    policy: dict[str, object] | None


class FleetSpecFile(TypedDict):
    """The parts of a fleet spec file (``controller.spec``) the plan reads or rewrites; the
    rest is passed through as written."""

    sites: list[SpecSite]
    tenants: dict[str, SpecTenant]
    global_policy: NotRequired[dict[str, object] | None]
    bundles: NotRequired[Mapping[str, Mapping[str, object]]]
    rollouts: NotRequired[list[object]]


@dataclass(frozen=True)
class SitePlan:
    id: str
    tenant: str
    kind: str
    port: int
    config: dict[str, object]  # the site agent's config file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class FleetPlan:
    spec: FleetSpecFile
    router: dict[str, object]
    controller: dict[str, object]
    serve: dict[str, object]
    sites: list[SitePlan]
    keys: dict[str, str]  # tenant -> demo API key
    trained: bool = True  # the trained fleet models (False: the random-weight fallback)
    bars: dict[str, float] = field(default_factory=dict)  # site -> min_confidence in use

    def residency(self, site: SitePlan) -> str:
        """The site's residency as the spec resolves it (the tightest level wins)."""
        order = ["cloud_only", "cloud_ok", "prefer_edge", "edge_only"]
        levels = [
            self.spec.get("global_policy") or {},
            (self.spec["tenants"].get(site.tenant) or {}).get("policy") or {},
            next(s for s in self.spec["sites"] if s["id"] == site.id).get("policy") or {},
        ]
        found = [r for lv in levels if isinstance(r := lv.get("residency"), str) and r]
        return max(found, key=order.index) if found else "prefer_edge"  # fmt: skip

    def write(self, run_dir: Path) -> dict[str, Path]:
        run_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "fleet": run_dir / "fleet.yaml",
            "router": run_dir / "router.yaml",
            "controller": run_dir / "controller.yaml",
            "serve": run_dir / "serve.yaml",
        }
        for name, body in (("fleet", self.spec), ("router", self.router),
                           ("controller", self.controller), ("serve", self.serve)):  # fmt: skip
            files[name].write_text(yaml.safe_dump(body, sort_keys=False))
        for s in self.sites:
            files[f"site:{s.id}"] = run_dir / f"site-{s.id}.yaml"
            files[f"site:{s.id}"].write_text(yaml.safe_dump(s.config, sort_keys=False))
        return files


def _run_spec(raw: FleetSpecFile, digest: str, bars: dict[str, float]) -> FleetSpecFile:
    spec = copy.deepcopy(raw)
    spec["bundles"] = {name: {"digest": digest} for name in raw.get("bundles") or ("demo",)}
    spec.pop("rollouts", None)
    for site in spec["sites"]:
        bar = bars.get(site["id"])
        if bar is not None:
            site["policy"] = {**(site.get("policy") or {}), "min_confidence": bar}
    return spec


def plan_fleet(cfg: UpConfig, redis_url: str, hf_dir: Path, bundle_dir: Path, digest: str,
               trained: bool = True) -> FleetPlan:  # fmt: skip
    """``trained``: the bundle and checkpoint are the trained fleet models (their bars);
    False: the random-weight fallback (``agent.min_confidence_random``)."""
    raw = yaml.safe_load(cfg.fleet_spec.read_text())
    bars = cfg.bars(trained)
    spec = _run_spec(raw, digest, bars)
    tenants = sorted(spec["tenants"])
    by_tenant = {t: k for k, t in cfg.api_keys.items()}
    missing = [t for t in tenants if t not in by_tenant]
    if missing:
        raise ValueError(f"up config: no api_keys entry for tenant(s) {', '.join(missing)}")
    keys = {t: by_tenant[t] for t in tenants}
    p = cfg.port
    router: dict[str, object] = {
        "http_host": "127.0.0.1", "http_port": p("router_http"),
        "grpc_host": "127.0.0.1", "grpc_port": p("router_grpc"),
        "api_keys": dict(cfg.api_keys), "redis_url": redis_url,
        "policies": {
            "global": spec.get("global_policy") or {},
            "tenants": {t: v["policy"] for t, v in spec["tenants"].items() if v.get("policy")},
            "sites": {s["id"]: s["policy"] for s in spec["sites"] if s.get("policy")},
        },
        "backends": [
            {"name": "ray-cloud", "type": "grpc", "target": f"127.0.0.1:{p('serve_grpc')}",
             "models": [MODEL], "slots": cfg.cloud.max_slots},
        ],
        # The controller owns policy and the sites (one agent backend each); the policies
        # above are what the router starts with until its first routing state.
        "controller": {"target": f"127.0.0.1:{p('controller_grpc')}", "token": cfg.admin_token,
                       "agent_models": [MODEL], "retry_s": 0.2},
    }  # fmt: skip
    controller: dict[str, object] = {
        "http_host": "127.0.0.1", "http_port": p("controller_http"),
        "grpc_host": "127.0.0.1", "grpc_port": p("controller_grpc"),
        "redis_url": redis_url, "namespace": f"up-{cfg.base_port}",
        "admin_token": cfg.admin_token, "status_page_public": True,
        "spec_file": "fleet.yaml", "bundle_dir": str(cfg.run_dir / "controller-bundles"),
        "heartbeat_s": cfg.agent.heartbeat_s,
    }  # fmt: skip
    serve = yaml.safe_load((ROOT / "cloud_worker" / "serve_config.yaml").read_text())
    serve["proxy_location"] = "HeadOnly"
    serve["http_options"] = {"host": "127.0.0.1", "port": p("serve_http")}
    serve["grpc_options"]["port"] = p("serve_grpc")
    app = serve["applications"][0]
    app["args"] = {**app["args"], "model_dir": str(hf_dir), "max_slots": cfg.cloud.max_slots,
                   "max_context": cfg.cloud.max_context, "redis_url": redis_url,
                   "model_name": MODEL}  # fmt: skip
    for dep in app.get("deployments", []):
        # One replica: the whole fleet shares two cores.
        dep.pop("autoscaling_config", None)
        dep["num_replicas"] = 1
        dep["ray_actor_options"] = {"num_cpus": 1}
    sites = []
    for i, s in enumerate(spec["sites"]):
        tenant = spec["tenants"][s["tenant"]]
        site_cfg: dict[str, object] = {
            "site": s["id"], "tenant": s["tenant"], "model": MODEL, "bundle": str(bundle_dir),
            "engines": cfg.agent.engines, "intra_op_threads": cfg.agent.intra_op_threads,
            # One machine: the fleet's Redis is every site's cache too, but it is shared, so
            # the edge_only site's requests stay out of it.
            "redis_url": redis_url, "redis_site_local": False,
            "http_host": "127.0.0.1", "http_port": p("agents", i),
            "router": {"target": f"127.0.0.1:{p('router_grpc')}", "api_key": keys[s["tenant"]],
                       "model": MODEL, "backoff_s": 0.2, "max_backoff_s": 2.0},
            "gate": {"threshold_source": cfg.agent.threshold_source},
            "spool": {"path": str(cfg.run_dir / f"spool-{s['id']}.sqlite")},
            "policies": {"global": spec.get("global_policy") or {},
                         "tenant": tenant.get("policy"), "site": s.get("policy")},
            "controller": {"target": f"127.0.0.1:{p('controller_grpc')}",
                           "heartbeat_s": cfg.agent.heartbeat_s,
                           "bundle_dir": str(cfg.run_dir / f"bundles-{s['id']}")},
        }  # fmt: skip
        sites.append(SitePlan(s["id"], s["tenant"], s.get("kind", "site"), p("agents", i),
                              site_cfg))  # fmt: skip
    return FleetPlan(spec, router, controller, serve, sites, keys, trained, bars)
