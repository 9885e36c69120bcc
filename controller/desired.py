"""Desired state: the declared spec with the operator's run-time changes layered on top.

Reads are in memory (the status page and 500 agents' syncs must not each hit Redis); writes go
to Redis first (``ControllerStore``), then to memory, then to ``on_change`` which pushes the
result to connected agents. A restarted controller calls :meth:`DesiredState.load` and has the
same desired state as before the crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from controller.spec import DIGEST_RE, BundleRef, FleetSpec, SiteSpec
from controller.store import BundleInfo, ControllerStore, JsonObject
from fleetvl.policy import Clamp, PolicyError, PolicyOverride, SlaPolicy, resolve_policy

__all__ = ["DesiredState", "UnknownObject"]

ChangeHook = Callable[[set[str] | None], Awaitable[None]]


class UnknownObject(LookupError):
    """A site, tenant or bundle the fleet does not know (HTTP 404)."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name = kind, name
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        super().__init__(f"unknown {kind} {name!r} (known: {shown or 'none'})")


class DesiredState:
    def __init__(self, spec: FleetSpec, store: ControllerStore, bundle_base_url: str) -> None:
        self.spec = spec
        self.store = store
        self.bundle_base_url = bundle_base_url.rstrip("/")
        self.policies: dict[str, Mapping[str, object]] = {}
        self.assignments: dict[str, str] = {}
        self.extra_bundles: dict[str, BundleInfo] = {}
        self.extra_sites: dict[str, SiteSpec] = {}
        self.policy_version = 0
        self.on_change: ChangeHook | None = None

    async def load(self) -> None:
        """Read the run-time layer from Redis (at start, and after a crash)."""
        self.policies = dict(await self.store.policies())
        self.assignments = await self.store.assignments()
        self.extra_bundles = await self.store.bundles()
        self.extra_sites = {
            k: SiteSpec.model_validate(v) for k, v in (await self.store.sites()).items()
        }
        self.policy_version = await self.store.policy_version()

    async def set_spec(self, spec: FleetSpec, who: str, why: str) -> None:
        """Replace the declared spec (file reload, ConfigMap change, custom resources)."""
        self.spec = spec
        self.policy_version = await self.store.bump_policy_version()
        await self.store.audit(who, "spec.replace", why, sites=len(spec.sites))
        await self._changed(None)

    async def _changed(self, sites: set[str] | None) -> None:
        if self.on_change is not None:
            await self.on_change(sites)

    # -- sites -------------------------------------------------------------------------
    def sites(self) -> dict[str, SiteSpec]:
        out = {s.id: s for s in self.spec.sites}
        out.update(self.extra_sites)
        return out

    def site(self, site_id: str) -> SiteSpec:
        s = self.extra_sites.get(site_id) or self.spec.site(site_id)
        if s is None:
            raise UnknownObject("site", site_id, sorted(self.sites()))
        return s

    async def put_site(self, site: SiteSpec, who: str, why: str) -> None:
        if site.tenant not in self.spec.tenants:
            raise PolicyError("tenant", f"unknown tenant {site.tenant!r}")
        await self.store.put_site(site.id, site.model_dump(mode="json"))
        self.extra_sites[site.id] = site
        await self.store.audit(who, "site.put", why, site=site.id)
        await self._changed({site.id})

    # -- policies ----------------------------------------------------------------------
    def _override(self, key: str, declared: PolicyOverride | None) -> PolicyOverride | None:
        if key in self.policies:
            return PolicyOverride.model_validate(self.policies[key])
        return declared

    def global_policy(self) -> SlaPolicy:
        if "global" in self.policies:
            return SlaPolicy.model_validate(self.policies["global"])
        return self.spec.global_policy

    def tenant_policy(self, tenant: str) -> PolicyOverride | None:
        t = self.spec.tenants.get(tenant)
        return self._override(f"tenant:{tenant}", t.policy if t else None)

    def site_policy(self, site: SiteSpec) -> PolicyOverride | None:
        return self._override(f"site:{site.id}", site.policy)

    def policy_layers(self, site_id: str) -> dict[str, JsonObject]:
        """``{"global": ..., "tenant": ..., "site": ...}`` as pushed to the site's agent."""
        site = self.site(site_id)
        tenant, own = self.tenant_policy(site.tenant), self.site_policy(site)
        return {
            "global": self.global_policy().model_dump(mode="json"),
            "tenant": tenant.model_dump(mode="json", exclude_none=True) if tenant else {},
            "site": own.model_dump(mode="json", exclude_none=True) if own else {},
        }

    def resolved(self, site_id: str) -> JsonObject:
        site = self.site(site_id)
        r = resolve_policy(
            self.global_policy(),
            tenant=self.tenant_policy(site.tenant),
            site=self.site_policy(site),
        )
        return r.policy.model_dump(mode="json")

    async def set_policy(
        self, level: str, name: str | None, value: Mapping[str, object] | None, who: str, why: str
    ) -> int:
        """Validate and store one level's policy; returns the new policy version.

        Raises:
            pydantic.ValidationError: a field is invalid.
            PolicyError: the change would loosen residency below an upper level (a
                configuration the router would silently clamp is refused here instead).
            UnknownObject: no such tenant or site.
        """
        if level == "global":
            key, affected = "global", None
            if value is not None:
                SlaPolicy.model_validate(value)
        elif level == "tenant":
            if name not in self.spec.tenants:
                raise UnknownObject("tenant", str(name), sorted(self.spec.tenants))
            key = f"tenant:{name}"
            affected = {s.id for s in self.sites().values() if s.tenant == name}
        elif level == "site":
            self.site(str(name))
            key, affected = f"site:{name}", {str(name)}
        else:
            raise PolicyError("level", f"unknown policy level {level!r} (global, tenant, site)")
        if value is not None and level != "global":
            PolicyOverride.model_validate(value)
        self._check_clamps(key, value, affected)
        self.policy_version = await self.store.set_policy(key, value)
        if value is None:
            self.policies.pop(key, None)
        else:
            self.policies[key] = value
        await self.store.audit(
            who, "policy.set", why, key=key, value=value, version=self.policy_version
        )
        await self._changed(affected)
        return self.policy_version

    def _clamps(self, sites: set[str]) -> dict[tuple[str, str, str], Clamp]:
        out: dict[tuple[str, str, str], Clamp] = {}
        for sid in sites:
            site = self.site(sid)
            r = resolve_policy(
                self.global_policy(),
                tenant=self.tenant_policy(site.tenant),
                site=self.site_policy(site),
            )
            out.update({(sid, c.field, c.level.value): c for c in r.clamps})
        return out

    def _check_clamps(
        self, key: str, value: Mapping[str, object] | None, affected: set[str] | None
    ) -> None:
        """Refuse a write that would make the router clamp some site's residency.

        Only clamps this write introduces count (a spec that already clamps a site must not
        block unrelated writes). The write is tried on the live dict and restored; nothing
        awaits in between, so no other task sees it.
        """
        if value is None:
            return
        sites = affected if affected is not None else set(self.sites())
        old = self._clamps(sites)
        before = self.policies.get(key)
        self.policies[key] = value
        try:
            new = self._clamps(sites)
        finally:
            if before is None:
                self.policies.pop(key, None)
            else:
                self.policies[key] = before
        for k, c in new.items():
            if k not in old:
                raise PolicyError(
                    c.field,
                    f"{c.level.value} policy for site {k[0]!r} sets {c.requested!r}, looser "
                    f"than {c.kept!r} from the {c.kept_from.value} policy; residency can only "
                    "be tightened",
                )

    # -- bundles -----------------------------------------------------------------------
    def bundle_ref(self, name_or_digest: str) -> BundleRef:
        """A bundle by spec name or digest (registered at run time or declared)."""
        ref: BundleRef | None
        if name_or_digest in self.spec.bundles:
            ref = self.spec.bundles[name_or_digest]
        elif (
            name_or_digest in self.extra_bundles
            or (name_or_digest := self._uploaded_named(name_or_digest)) in self.extra_bundles
        ):
            info = self.extra_bundles[name_or_digest]
            ref = BundleRef(digest=name_or_digest, url=info.get("url"), size=info.get("size"))
        else:
            ref = next((b for b in self.spec.bundles.values() if b.digest == name_or_digest), None)
            if ref is None:
                if not DIGEST_RE.match(name_or_digest):
                    known = sorted(self.spec.bundles) + sorted(self.extra_bundles)
                    raise UnknownObject("bundle", name_or_digest, known)
                ref = BundleRef(digest=name_or_digest)
        if ref.url is None:
            ref = ref.model_copy(update={"url": f"{self.bundle_base_url}/bundles/{ref.digest}"})
        return ref

    def _uploaded_named(self, name: str) -> str:
        """The digest of the newest bundle uploaded with this name (``POST /api/bundles?name=``),
        or ``name`` itself."""
        named = [d for d, info in self.extra_bundles.items() if info.get("name") == name]
        return named[-1] if named else name

    def bundle_name(self, digest: str) -> str:
        for name, b in self.spec.bundles.items():
            if b.digest == digest:
                return name
        return str(self.extra_bundles.get(digest, {}).get("name") or digest[:19])

    def assigned_bundle(self, site_id: str) -> BundleRef | None:
        site = self.site(site_id)
        if site_id in self.assignments:
            return self.bundle_ref(self.assignments[site_id])
        name = site.bundle or (t.bundle if (t := self.spec.tenants.get(site.tenant)) else None)
        return self.bundle_ref(name) if name else None

    async def register_bundle(self, digest: str, info: BundleInfo, who: str) -> None:
        await self.store.put_bundle(digest, info)
        self.extra_bundles[digest] = info
        await self.store.audit(who, "bundle.register", "", digest=digest, **info)

    async def assign(self, changes: dict[str, str | None], who: str, why: str) -> None:
        """Set (digest) or clear (None: back to the spec's bundle) sites' assignments."""
        for sid, digest in changes.items():
            self.site(sid)
            if digest is not None:
                self.bundle_ref(digest)
        await self.store.set_assignments(changes)
        for sid, digest in changes.items():
            if digest is None:
                self.assignments.pop(sid, None)
            else:
                self.assignments[sid] = digest
        await self.store.audit(who, "bundle.assign", why, changes=changes)
        await self._changed(set(changes))
