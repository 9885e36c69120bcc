"""Fleet spec validation, rollout wave selection and the gate's verdicts (pure logic)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.config import ControllerConfig
from controller.rollout import judge, wave_sites
from controller.sessions import MetricSample, aggregate
from controller.spec import FleetSpec, Gate, RolloutPlan, Selector, SiteSpec, load_spec
from controller.status_page import render_status

ROOT = Path(__file__).resolve().parents[2]


def _spec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tenants": {"t": {}}, "sites": [{"id": "s1", "tenant": "t"}]}
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_spec(sites=[{"id": "s1", "tenant": "nope"}]), "names tenant 'nope'"),
        (_spec(sites=[{"id": "s1", "tenant": "t"}] * 2), "declared twice"),
        (_spec(bundles={"b": {"digest": "md5:abc"}}), "sha256:<64 hex>"),
        (_spec(sites=[{"id": "s1", "tenant": "t", "bundle": "b"}]), "unknown bundle 'b'"),
        (_spec(sites=[{"id": "Bad Id!", "tenant": "t"}]), "should match pattern"),
        (_spec(global_policy={"deadline_ms": 0}), "greater than 0"),
        (_spec(rollouts=[{"id": "r", "bundle": "b"}]), "unknown bundle 'b'"),
    ],
)
def test_invalid_specs_name_the_problem(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FleetSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("waves", "message"),
    [
        ([10, 50], "last wave must cover 100%"),
        ([50, 10, 100], "must increase"),
        ([0, 100], r"\(0, 100\]"),
    ],
)
def test_rollout_waves_are_checked(waves: list[float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutPlan(id="r", bundle="b", waves=waves)


def test_example_files_load() -> None:
    spec = load_spec(ROOT / "examples" / "fleet.yaml")
    assert {s.kind for s in spec.sites} == {"substation", "retail_store"}
    cfg = ControllerConfig.load(
        ROOT / "examples" / "controller.yaml", {"FLEETVL_CONTROLLER_ADMIN_TOKEN": "t0k"}
    )
    assert cfg.admin_token.get_secret_value() == "t0k"
    assert cfg.fleet_spec() == spec


def test_admin_token_is_required(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("http_port: 1\n")
    with pytest.raises(ValidationError, match="admin_token"):
        ControllerConfig.load(tmp_path / "c.yaml", {})


def test_selector() -> None:
    site = SiteSpec(id="s1", tenant="t", kind="substation", tags=["north", "oil"])
    assert Selector(tenant="t", tags=["north"]).matches(site)
    assert not Selector(kind="retail_store").matches(site)
    assert not Selector(tags=["north", "south"]).matches(site)


def test_waves_are_cumulative_stable_and_round_up() -> None:
    sites = [f"s{i:02d}" for i in range(10)]
    w1, w2, w3 = (wave_sites("r", sites, p) for p in (10, 50, 100))
    assert (len(w1), len(w2), len(w3)) == (1, 5, 10)
    assert set(w1) <= set(w2) <= set(w3)
    assert wave_sites("r", list(reversed(sites)), 50) == w2  # order of input does not matter
    assert wave_sites("other", sites, 50) != w2  # each rollout picks its own canaries
    assert len(wave_sites("r", sites[:3], 10)) == 1  # at least one site


def _agg(requests: float, errors: float, esc: float, sla: float) -> dict[str, float]:
    return aggregate([MetricSample(0, "b", requests, errors, esc, sla, 100.0)])


def test_gate_verdicts() -> None:
    gate = Gate(
        min_requests=100,
        max_error_rate_increase=0.02,
        max_sla_drop=0.05,
        max_escalation_increase=0.1,
    )
    base = _agg(1000, 10, 0.2, 0.98)
    ok, why = judge(_agg(50, 0, 0.2, 0.98), base, gate)
    assert ok is None
    assert "50 of 100" in why[0]
    assert judge(_agg(200, 3, 0.25, 0.96), base, gate) == (True, [])
    ok, why = judge(_agg(200, 20, 0.2, 0.98), base, gate)
    assert ok is False
    assert "error rate 0.100" in why[0]
    ok, why = judge(_agg(200, 2, 0.45, 0.90), base, gate)
    assert ok is False
    assert len(why) == 2  # SLA and escalation both worse
    assert judge(_agg(200, 50, 0.9, 0.1), None, gate) == (True, [])  # no baseline left


def test_aggregate_weights_rates_by_requests() -> None:
    a = aggregate(
        [MetricSample(0, "b", 100, 1, 0.1, 1.0, 100), MetricSample(1, "b", 300, 3, 0.5, 0.8, 300)]
    )
    assert a["requests"] == 400
    assert a["error_rate"] == pytest.approx(0.01)
    assert a["escalation_rate"] == pytest.approx(0.4)
    assert a["sla_attainment"] == pytest.approx(0.85)
    assert math.isnan(aggregate([])["error_rate"])


def test_status_page_escapes_what_operators_typed() -> None:
    row = {
        "id": "s1",
        "tenant": "t",
        "kind": "substation",
        "tags": [],
        "connected": False,
        "healthy": False,
        "last_heartbeat": None,
        "active_bundle": "",
        "active_bundle_name": "",
        "desired_bundle": None,
        "desired_bundle_name": None,
        "in_sync": True,
        "requests_per_min": 0.0,
        "location": "<script>alert(1)</script>",
    }
    html = render_status(
        {
            "controller_id": "c",
            "ts": 0,
            "policy_version": 1,
            "sites": [row],
            "totals": {"sites": 1, "connected": 0, "healthy": 0},
            "rollouts": [],
        }
    )
    assert "<script>alert" not in html
    assert "&lt;script&gt;" in html


def test_example_custom_resources_match_the_models() -> None:
    import yaml

    from controller.kube import merge_resources

    crds = {
        d["spec"]["names"]["plural"]: d
        for d in yaml.safe_load_all((ROOT / "examples" / "kube" / "crds.yaml").read_text())
    }
    props = crds["edgesites"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    crd_fields = set(props["spec"]["properties"]) | {"id"}
    model_fields = {"tokenSha256" if f == "token_sha256" else f for f in SiteSpec.model_fields}
    assert crd_fields == model_fields
    objs = list(yaml.safe_load_all((ROOT / "examples" / "kube" / "objects.yaml").read_text()))
    by_plural: dict[str, dict[str, Any]] = {"edgesites": {}, "slapolicies": {}}
    for o in objs:
        plural = "edgesites" if o["kind"] == "EdgeSite" else "slapolicies"
        by_plural[plural][o["metadata"]["name"]] = o
    spec, problems = merge_resources(load_spec(ROOT / "examples" / "fleet.yaml"), by_plural)
    assert problems == []
    hull = spec.site("sub-hull-07")
    assert hull is not None
    assert hull.policy is not None
    assert hull.policy.deadline_ms == 3000
    assert spec.tenants["northgrid"].policy is not None
    assert spec.tenants["northgrid"].policy.residency == "edge_only"
    assert spec.tenants["northgrid"].policy.min_confidence == 0.95  # the file's field stays


def test_session_window_since() -> None:
    from controller.sessions import AgentSession

    s = AgentSession(site="s1")
    for t in range(10):
        s.samples.append(MetricSample(float(t), "b", 1, 0, 0, 1, 1))
    assert [x.ts for x in s.since(7.0)] == [7.0, 8.0, 9.0]
    assert s.since(100.0) == []
    assert len(s.recent(60.0, now=9.0)) == 10
