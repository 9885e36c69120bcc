"""`fleetvl up`'s generated configs, read back through each tier's own config model, and the
demo report's arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from controller.config import ControllerConfig
from edge_agent.agent.config import AgentConfig
from fleetvl.launch.config import UpConfig
from fleetvl.launch.configs import plan_fleet
from fleetvl.launch.report import format_report, summarize
from fleetvl.launch.workload import Outcome, Planned, plan_workload, refusal_reason
from router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def plan(tmp_path: Path):  # noqa: ANN201
    cfg = UpConfig.load(ROOT / "examples" / "up.yaml", environ={})
    cfg = cfg.model_copy(update={"run_dir": tmp_path})
    return cfg, plan_fleet(cfg, "redis://127.0.0.1:1/0", tmp_path / "hf", tmp_path / "int4", DIGEST)


def test_every_generated_config_loads_in_its_tier(plan, tmp_path: Path) -> None:  # noqa: ANN001
    cfg, p = plan
    files = p.write(tmp_path)
    router = RouterConfig.load(files["router"])
    controller = ControllerConfig.load(files["controller"], {})
    spec = controller.fleet_spec()
    agents = [AgentConfig.load(files[f"site:{s.id}"], environ={}) for s in p.sites]
    declared = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())
    assert [a.site for a in agents] == [s["id"] for s in declared["sites"]]
    # One agent backend per site, one cloud backend (the Serve app), nothing else.
    kinds = sorted((b.type, b.site) for b in router.backends)
    assert kinds == sorted([("grpc", None)] + [("agent", a.site) for a in agents])
    # Every bundle of the run's spec is the demo bundle: no agent is asked to download one.
    assert {b.digest for b in spec.bundles.values()} == {DIGEST}
    assert spec.rollouts == []
    ports = [router.http_port, router.grpc_port, controller.http_port, controller.grpc_port,
             *(a.http_port for a in agents)]  # fmt: skip
    assert len(set(ports)) == len(ports)
    assert all(cfg.base_port <= x < cfg.base_port + 100 for x in ports if x)
    # The demo's per-site bars reach the controller's spec (the controller pushes them).
    durham = spec.site("sub-durham-03")
    assert durham is not None
    assert durham.policy is not None
    assert durham.policy.min_confidence == cfg.agent.min_confidence["sub-durham-03"]


def test_router_and_agents_know_the_edge_only_site(plan) -> None:  # noqa: ANN001
    _, p = plan
    leeds = next(s for s in p.sites if s.id == "sub-leeds-01")
    assert p.residency(leeds) == "edge_only"
    assert p.router["policies"]["sites"]["sub-leeds-01"]["residency"] == "edge_only"
    assert leeds.config["policies"]["site"]["residency"] == "edge_only"
    assert [p.residency(s) for s in p.sites].count("edge_only") == 1


def test_base_port_and_redis_come_from_the_environment() -> None:
    env = {"FLEETVL_UP_BASE_PORT": "21000", "FLEETVL_REDIS_URL": "redis://10.0.0.5:6380/2"}
    cfg = UpConfig.load(ROOT / "examples" / "up.yaml", environ=env)
    assert cfg.port("router_http") == 21000
    assert cfg.port("agents", 2) == 21012
    assert cfg.redis_url == "redis://10.0.0.5:6380/2"
    assert cfg.fleet_spec == ROOT / "examples" / "fleet.yaml"


def test_a_bad_up_config_is_refused_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "up.yaml").write_text("base_port: 80\nports: {router_htp: 3}\n")
    with pytest.raises(ValidationError) as err:
        UpConfig.load(tmp_path / "up.yaml", environ={})
    text = str(err.value)
    assert "base_port" in text
    assert "router_htp" in text


def test_workload_covers_every_site_deadlines_priorities_and_a_burst() -> None:
    sites = [
        {"id": "a", "tenant": "t", "kind": "substation", "residency": "edge_only"},
        {"id": "b", "tenant": "t", "kind": "retail_store", "residency": "prefer_edge"},
    ]
    phases = plan_workload(sites, per_site=6, burst=5)
    reqs = [r for ph in phases for r in ph]
    assert {r.site for r in reqs if r.via == "agent"} == {"a", "b"}
    assert {r.kind for r in reqs} >= {"loose", "tight", "critical", "batch", "burst", "router"}
    assert len(phases[-1]) == 5
    assert {r.site for r in phases[-1]} == {"b"}  # the burst hits a site that may escalate
    again = plan_workload(sites, per_site=6, burst=5)
    assert [r.image for ph in again for r in ph] == [r.image for r in reqs]  # deterministic


def _out(site: str, status: int, ms: float, served: str | None = None, via: str = "agent",
         deadline: float | None = 1000, reason: str | None = None) -> Outcome:  # fmt: skip
    p = Planned(site, "t", via, "loose", "q", b"")
    return Outcome(p, status, ms / 1000, served_by=served,
                   escalated=via == "agent" and served in ("cloud", "cache"),
                   deadline_ms=deadline, reason=reason)  # fmt: skip


def test_report_counts_escalations_latency_sla_and_refusals() -> None:
    outs = [_out("a", 200, 100, "edge"), _out("a", 200, 300, "cloud"),
            _out("a", 200, 1500, "cloud"), _out("a", 503, 2, reason="rejected: overloaded"),
            _out("b", 200, 50, "edge", via="router")]  # fmt: skip
    s = summarize(outs, ["a", "b"])
    a = s["sites"]["a"]
    assert a["requests"] == 4
    assert a["answered"] == 3
    assert a["served_by"] == {"edge": 1, "cloud": 2, "cache": 0}
    assert a["escalation_rate"] == pytest.approx(2 / 3)
    assert a["sla_attainment"] == pytest.approx(2 / 4)  # 1500 ms > 1000 ms; the refusal misses
    assert a["latency_p50_ms"] == pytest.approx(300)
    assert a["refused"] == {"503 rejected: overloaded": 1}
    assert s["sites"]["b"]["escalation_rate"] is None  # nothing came through its agent
    assert s["overall"]["requests"] == 5
    text = "\n".join(format_report(s, {"a": "edge_only"}))
    assert "a: 1 x 503 rejected: overloaded" in text


def test_refusal_reason_reads_openai_shaped_errors() -> None:
    body = {"type": "rejected", "reason": "deadline_unmeetable", "message": "predicted 900 ms"}
    assert refusal_reason(body) == "deadline_unmeetable: predicted 900 ms"
    assert refusal_reason({"error": {"type": "invalid_request_error"}}) == "invalid_request_error"
