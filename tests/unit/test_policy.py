"""SLA policy resolution: precedence, tightening-only residency, and 422-ready errors."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from fleetvl.errors import InputError
from fleetvl.policy import (
    CacheMode,
    PolicyLevel,
    PolicyOverride,
    Priority,
    Residency,
    ResidencyLoosened,
    SlaPolicy,
    error_details,
    resolve_policy,
)

GLOBAL = SlaPolicy(deadline_ms=10_000, residency=Residency.CLOUD_OK, max_output_tokens=256)


def test_later_levels_override_and_each_field_records_its_level() -> None:
    r = resolve_policy(
        GLOBAL,
        tenant=PolicyOverride(deadline_ms=8000, min_confidence=0.8, priority=Priority.BATCH),
        site=PolicyOverride(deadline_ms=5000, cache=CacheMode.READ),
        request=PolicyOverride(deadline_ms=2000),
    )
    p = r.policy
    assert (p.deadline_ms, p.min_confidence, p.priority, p.cache) == (
        2000,
        0.8,
        Priority.BATCH,
        CacheMode.READ,
    )
    assert p.max_output_tokens == 256
    assert r.sources["deadline_ms"] is PolicyLevel.REQUEST
    assert r.sources["min_confidence"] is PolicyLevel.TENANT
    assert r.sources["cache"] is PolicyLevel.SITE
    assert r.sources["max_output_tokens"] is PolicyLevel.GLOBAL
    assert r.explain()["deadline_ms"] == {"value": 2000, "set_by": "request"}
    assert r.explain()["priority"] == {"value": "batch", "set_by": "tenant"}


def test_request_may_tighten_residency() -> None:
    r = resolve_policy(
        GLOBAL,
        site=PolicyOverride(residency=Residency.PREFER_EDGE),
        request=PolicyOverride(residency=Residency.EDGE_ONLY),
    )
    assert r.policy.residency is Residency.EDGE_ONLY
    assert r.sources["residency"] is PolicyLevel.REQUEST


@pytest.mark.parametrize(
    ("site", "requested"),
    [
        (Residency.EDGE_ONLY, Residency.CLOUD_ONLY),
        (Residency.EDGE_ONLY, Residency.PREFER_EDGE),
        (Residency.EDGE_ONLY, Residency.CLOUD_OK),
        (Residency.PREFER_EDGE, Residency.CLOUD_OK),
        (Residency.PREFER_EDGE, Residency.CLOUD_ONLY),
    ],
)
def test_request_that_loosens_residency_is_refused(site: Residency, requested: Residency) -> None:
    with pytest.raises(ResidencyLoosened) as exc:
        resolve_policy(
            GLOBAL, site=PolicyOverride(residency=site), request=PolicyOverride(residency=requested)
        )
    assert isinstance(exc.value, InputError)  # the API edge maps InputError to 4xx
    [detail] = error_details(exc.value, prefix="sla.")
    assert detail["field"] == "sla.residency"
    assert site.value in detail["reason"]
    assert requested.value in detail["reason"]
    assert "site policy" in detail["reason"]


def test_cloud_only_and_cloud_ok_are_equally_strict() -> None:
    # Both let every image leave the site; cloud_only merely pins the route.
    pinned = resolve_policy(GLOBAL, request=PolicyOverride(residency=Residency.CLOUD_ONLY))
    assert pinned.policy.residency is Residency.CLOUD_ONLY
    tenant = PolicyOverride(residency=Residency.CLOUD_ONLY)
    back = resolve_policy(
        GLOBAL, tenant=tenant, request=PolicyOverride(residency=Residency.CLOUD_OK)
    )
    assert back.policy.residency is Residency.CLOUD_OK


def test_site_config_loosening_residency_is_clamped_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleetvl.policy"):
        r = resolve_policy(
            GLOBAL,
            tenant=PolicyOverride(residency=Residency.EDGE_ONLY),
            site=PolicyOverride(residency=Residency.CLOUD_ONLY, deadline_ms=3000),
        )
    assert r.policy.residency is Residency.EDGE_ONLY
    assert r.sources["residency"] is PolicyLevel.TENANT
    assert r.policy.deadline_ms == 3000  # the rest of the site's policy still applies
    [clamp] = r.clamps
    assert (clamp.level, clamp.requested, clamp.kept) == (
        PolicyLevel.SITE,
        "cloud_only",
        "edge_only",
    )
    assert "cloud_only" in caplog.text


def test_shorter_deadline_caps_an_inherited_ttft_target() -> None:
    tenant = PolicyOverride(ttft_target_ms=1500)
    r = resolve_policy(GLOBAL, tenant=tenant, request=PolicyOverride(deadline_ms=800))
    assert r.policy.ttft_target_ms == 800
    assert r.sources["ttft_target_ms"] is PolicyLevel.REQUEST


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"deadline_ms": -5}, "deadline_ms", "greater than 0 (got -5)"),
        ({"deadline_ms": True}, "deadline_ms", "got True"),
        ({"min_confidence": 1.5}, "min_confidence", "less than or equal to 1 (got 1.5)"),
        ({"residency": "anywhere"}, "residency", "'edge_only'"),
        ({"priority": "urgent"}, "priority", "got 'urgent'"),
        ({"max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
        ({"deadline": 100}, "deadline", "unknown field; known fields: deadline_ms"),
        ({"deadline_ms": 500, "ttft_target_ms": 900}, "ttft_target_ms", "exceeds deadline_ms"),
    ],
)
def test_invalid_values_give_field_and_reason(body: dict, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PolicyOverride.model_validate(body)
    details = error_details(exc.value)
    assert [d["field"] for d in details] == [field]
    assert fragment in details[0]["reason"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as exc:
        SlaPolicy.model_validate({"deadline_ms": 0, "cache": "maybe"})
    fields = {d["field"] for d in error_details(exc.value, prefix="sla.")}
    assert fields == {"sla.deadline_ms", "sla.cache"}


def test_policies_are_immutable() -> None:
    with pytest.raises(ValidationError):
        GLOBAL.deadline_ms = 1  # type: ignore[misc]
