"""The fleet spec: what each site should run and under which policies.

Locally it is a YAML file; in a cluster it is the Helm chart's ConfigMap (mounted as the same
file) plus, optionally, ``EdgeSite`` / ``SlaPolicy`` custom resources (``controller.kube``).
The spec is *declared* state. Changes made through the admin API are stored in Redis
(``controller.store``) and layered on top; see ``controller.desired``.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetvl.policy import PolicyOverride, SlaPolicy

__all__ = [
    "BundleRef",
    "FleetSpec",
    "Gate",
    "Location",
    "RolloutPlan",
    "Selector",
    "SiteSpec",
    "TenantSpec",
    "load_spec",
]

_ID = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Location(_Strict):
    name: str | None = Field(None, description="Human-readable place, e.g. 'Leeds North'.")
    lat: float | None = Field(None, ge=-90, le=90, description="Latitude, degrees.")
    lon: float | None = Field(None, ge=-180, le=180, description="Longitude, degrees.")


class SiteSpec(_Strict):
    id: str = Field(pattern=_ID, description="Site id the agent registers with (DNS-label-like).")
    tenant: str = Field(pattern=_ID, description="Owning tenant; must be declared in `tenants`.")
    kind: str = Field("site", description="What the site is: substation, retail_store, ...")
    tags: list[str] = Field(default_factory=list, description="Free labels used by selectors.")
    location: Location = Field(default_factory=Location, description="Where the site is.")
    policy: PolicyOverride | None = Field(None, description="Site-level SLA policy override.")
    bundle: str | None = Field(
        None, description="Bundle name (from `bundles`) this site runs; default: its tenant's."
    )
    token_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the agent's credential; set: the agent must present it.",
    )


class TenantSpec(_Strict):
    policy: PolicyOverride | None = Field(None, description="Tenant-level SLA policy override.")
    bundle: str | None = Field(None, description="Default bundle name for the tenant's sites.")


class BundleRef(_Strict):
    digest: str = Field(description="'sha256:<hex>' of the bundle archive (content address).")
    url: str | None = Field(
        None, description="Where agents download it; default: the controller's bundle store."
    )
    size: int | None = Field(None, ge=0, description="Archive size in bytes, if known.")

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not DIGEST_RE.match(v):
            raise ValueError(f"bundle digest must look like 'sha256:<64 hex>', got {v!r}")
        return v


class Selector(_Strict):
    """Which sites a rollout covers; every given field must match."""

    tenant: str | None = Field(None, description="Only this tenant's sites.")
    kind: str | None = Field(None, description="Only sites of this kind.")
    tags: list[str] = Field(default_factory=list, description="Sites carrying all these tags.")
    sites: list[str] = Field(default_factory=list, description="Only these site ids.")

    def matches(self, site: SiteSpec) -> bool:
        return (
            (self.tenant is None or site.tenant == self.tenant)
            and (self.kind is None or site.kind == self.kind)
            and set(self.tags) <= set(site.tags)
            and (not self.sites or site.id in self.sites)
        )


class Gate(_Strict):
    """Health gate between waves: canary sites (new bundle) vs sites still on the old one."""

    bake_s: float = Field(
        60.0, ge=0, description="Observation time once every wave site runs the new bundle."
    )
    min_requests: int = Field(
        20, ge=0, description="Requests the canaries must serve before the gate is judged."
    )
    max_error_rate_increase: float = Field(
        0.02, ge=0, le=1, description="Allowed canary error rate minus baseline error rate."
    )
    max_sla_drop: float = Field(
        0.05, ge=0, le=1, description="Allowed baseline SLA attainment minus canary attainment."
    )
    max_escalation_increase: float = Field(
        0.10, ge=0, le=1, description="Allowed canary escalation rate minus baseline rate."
    )
    install_timeout_s: float = Field(
        600.0, gt=0, description="Wave sites that do not run the new bundle by then fail it."
    )


class RolloutPlan(_Strict):
    id: str = Field(pattern=_ID, description="Rollout id (unique; also its Redis key).")
    bundle: str = Field(description="Bundle name (from `bundles`) or digest to roll out.")
    selector: Selector = Field(default_factory=Selector, description="Sites it covers.")
    waves: list[float] = Field(
        default_factory=lambda: [10.0, 50.0, 100.0],
        min_length=1,
        description="Cumulative percentages of matching sites per wave; the last must be 100.",
    )
    gate: Gate = Field(default_factory=Gate, description="Health gate between waves.")

    @field_validator("waves")
    @classmethod
    def _waves(cls, v: list[float]) -> list[float]:
        if any(not 0 < w <= 100 for w in v):
            raise ValueError(f"wave percentages must be in (0, 100], got {v}")
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"wave percentages must increase, got {v}")
        if v[-1] != 100:
            raise ValueError(f"the last wave must cover 100% of the sites, got {v[-1]}")
        return v


class FleetSpec(_Strict):
    global_policy: SlaPolicy = Field(
        default_factory=SlaPolicy, description="The global SLA policy (lowest level)."
    )
    tenants: dict[str, TenantSpec] = Field(default_factory=dict, description="Tenants by id.")
    sites: list[SiteSpec] = Field(default_factory=list, description="Declared sites.")
    bundles: dict[str, BundleRef] = Field(default_factory=dict, description="Bundles by name.")
    rollouts: list[RolloutPlan] = Field(
        default_factory=list, description="Rollouts started when the controller first sees them."
    )

    @model_validator(mode="after")
    def _references(self) -> FleetSpec:
        seen: set[str] = set()
        for s in self.sites:
            if s.id in seen:
                raise ValueError(f"site {s.id!r} is declared twice")
            seen.add(s.id)
            if s.tenant not in self.tenants:
                raise ValueError(
                    f"site {s.id!r} names tenant {s.tenant!r}, which is not in `tenants` "
                    f"(declared: {sorted(self.tenants)})"
                )
            if s.bundle is not None and s.bundle not in self.bundles:
                raise ValueError(f"site {s.id!r} names unknown bundle {s.bundle!r}")
        for name, t in self.tenants.items():
            if t.bundle is not None and t.bundle not in self.bundles:
                raise ValueError(f"tenant {name!r} names unknown bundle {t.bundle!r}")
        for r in self.rollouts:
            if r.bundle not in self.bundles and not DIGEST_RE.match(r.bundle):
                raise ValueError(f"rollout {r.id!r} names unknown bundle {r.bundle!r}")
        return self

    def site(self, site_id: str) -> SiteSpec | None:
        return next((s for s in self.sites if s.id == site_id), None)


def load_spec(path: str | Path) -> FleetSpec:
    """Read and validate a fleet spec YAML file.

    Raises:
        FileNotFoundError: no such file.
        pydantic.ValidationError: the spec is invalid (the message names the field and why).
    """
    data: object = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a fleet spec is a mapping, got {type(data).__name__}")
    return FleetSpec.model_validate(data)
