"""`fleetvl up`'s generated configs, read back through each tier's own config model, and the
demo report's arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from controller.config import ControllerConfig
from edge_agent.agent.config import AgentConfig
from fleetvl_tools.fleetdata import TASKS
from fleetvl_tools.launch.artifacts import fallback_note
from fleetvl_tools.launch.config import UpConfig
from fleetvl_tools.launch.configs import plan_fleet
from fleetvl_tools.launch.report import format_report, summarize
from fleetvl_tools.launch.workload import Outcome, Planned, plan_workload, refusal_reason
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
    router = RouterConfig.load(files["router"], environ={})
    controller = ControllerConfig.load(files["controller"], {})
    spec = controller.fleet_spec()
    agents = [AgentConfig.load(files[f"site:{s.id}"], environ={}) for s in p.sites]
    declared = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())
    assert [a.site for a in agents] == [s["id"] for s in declared["sites"]]
    # One cloud backend (the Serve app); the sites' agent backends come from the controller,
    # which the router watches on the controller's gRPC port with the run's admin token.
    assert [(b.type, b.site) for b in router.backends] == [("grpc", None)]
    assert router.controller is not None
    assert router.controller.target == f"127.0.0.1:{controller.grpc_port}"
    assert router.controller.token.get_secret_value() == cfg.admin_token
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


def test_the_shipped_trained_models_are_the_default() -> None:
    cfg = UpConfig.load(ROOT / "examples" / "up.yaml", environ={})
    assert cfg.trained_models() == (ROOT / "models" / "fleet-edge", ROOT / "models" / "fleet-cloud")
    assert fallback_note(cfg) is None
    assert cfg.bars(trained=True) == cfg.agent.min_confidence
    # Bars of both kinds for every site of the spec, and they differ: random weights score ~0.02.
    sites = {s["id"] for s in yaml.safe_load(cfg.fleet_spec.read_text())["sites"]}
    assert set(cfg.agent.min_confidence) == set(cfg.agent.min_confidence_random) == sites
    assert cfg.agent.min_confidence != cfg.agent.min_confidence_random


def test_missing_model_dirs_fall_back_to_the_preset_and_say_so(tmp_path: Path) -> None:
    (tmp_path / "cloud").mkdir()
    (tmp_path / "cloud" / "config.json").write_text("{}")
    raw = yaml.safe_load((ROOT / "examples" / "up.yaml").read_text())
    raw |= {"edge_model": "edge", "cloud_model": "cloud", "fleet_spec": str(ROOT / "examples" /
            "fleet.yaml"), "preset": "tiny"}  # fmt: skip
    (tmp_path / "up.yaml").write_text(yaml.safe_dump(raw))
    cfg = UpConfig.load(tmp_path / "up.yaml", environ={})
    assert cfg.edge_model == tmp_path / "edge"  # relative to the config file
    assert cfg.trained_models() is None  # the cloud model alone is not enough
    note = fallback_note(cfg)
    assert note is not None
    assert f"edge_model {tmp_path / 'edge'}" in note
    assert "cloud_model" not in note  # only what is missing is named
    assert "random-weight 'tiny' checkpoint" in note
    # The fallback's agents get the random-weight bars.
    p = plan_fleet(cfg, "redis://127.0.0.1:1/0", tmp_path / "hf", tmp_path / "int4", DIGEST,
                   trained=False)  # fmt: skip
    durham = next(s for s in p.spec["sites"] if s["id"] == "sub-durham-03")
    assert durham["policy"]["min_confidence"] == cfg.agent.min_confidence_random["sub-durham-03"]
    assert p.bars == cfg.agent.min_confidence_random
    assert not p.trained
    # Not configured at all: the same fallback.
    bare = cfg.model_copy(update={"edge_model": None, "cloud_model": None})
    assert bare.trained_models() is None
    assert "not configured" in (fallback_note(bare) or "")


SITES = [
    {"id": "a", "tenant": "t", "kind": "substation", "residency": "edge_only"},
    {"id": "b", "tenant": "t", "kind": "retail_store", "residency": "prefer_edge"},
]


def test_fleet_questions_carry_their_answers_and_match_the_site_kind() -> None:
    phases = plan_workload(SITES, per_site=6, burst=5, run_seed=7, fleet_questions=True)
    reqs = [r for ph in phases for r in ph]
    assert all(r.expected and r.task and r.seed == 7 and r.max_tokens == 8 for r in reqs)
    for r in reqs:
        assert TASKS[r.task][0] == ("substation" if r.site == "a" else "retail"), r.task
    # Every task of each kind is asked, and the questions are the generator's own.
    assert {r.task for r in reqs if r.site == "a"} == {
        t for t, (site, _) in TASKS.items() if site == "substation"
    }
    assert any("gauge" in r.question for r in reqs if r.task == "gauge")
    again = plan_workload(SITES, per_site=6, burst=5, run_seed=8, fleet_questions=True)
    assert [(r.question, r.image, r.expected) for ph in again for r in ph] == [
        (r.question, r.image, r.expected) for r in reqs
    ]  # deterministic: the same questions every run, only the cache-busting seed differs
    drawn = [r for ph in plan_workload(SITES, per_site=2, burst=1) for r in ph]
    assert all(r.expected is None for r in drawn)  # the random-weight fallback: not graded


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


def test_report_grades_answers_overall_and_by_who_served_them() -> None:
    def graded(served: str, text: str, expected: str, status: int = 200) -> Outcome:
        p = Planned("a", "t", "agent", "loose", "q", b"", expected=expected)
        return Outcome(p, status, 0.1, served_by=served if status == 200 else None, text=text)

    outs = [graded("edge", " Open\n", "open"), graded("edge", "3", "2"),
            graded("cloud", "closed", "closed"), graded("cache", "4 2", "4  2"),
            graded("edge", "", "1", status=503)]  # fmt: skip
    assert [o.correct for o in outs] == [True, False, True, True, None]  # refusals: ungraded
    s = summarize(outs, ["a"])["overall"]
    assert (s["graded"], s["correct"]) == (4, 3)
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["accuracy_by"]["edge"] == {"graded": 2, "correct": 1, "accuracy": 0.5}
    assert s["accuracy_by"]["cloud"]["accuracy"] == 1.0
    text = "\n".join(format_report(summarize(outs, ["a"]), {}))
    assert (
        "accuracy (exact answer): overall 75% (3/4); edge 50% (1/2), cloud 100% (1/1), "
        "cache 100% (1/1)" in text
    )
    ungraded = [_out("a", 200, 100, "edge")]
    assert "accuracy: n/a" in "\n".join(format_report(summarize(ungraded, ["a"]), {}))


def test_refusal_reason_reads_openai_shaped_errors() -> None:
    body = {"type": "rejected", "reason": "deadline_unmeetable", "message": "predicted 900 ms"}
    assert refusal_reason(body) == "deadline_unmeetable: predicted 900 ms"
    assert refusal_reason({"error": {"type": "invalid_request_error"}}) == "invalid_request_error"
