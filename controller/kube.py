"""Fleet spec from Kubernetes custom resources: ``EdgeSite`` and ``SlaPolicy``.

The official ``kubernetes`` client lists each kind, then watches from the list's
``resourceVersion`` (re-listing on ``410 Gone``). The resources are layered over the file
spec (the Helm ConfigMap): an ``EdgeSite`` named like a file site replaces it; an
``SlaPolicy`` sets fields of the global, a tenant's or a site's policy (fields it does not
name keep the file's values). Objects that do not validate are
skipped with a log line naming the object and the reason; the rest of the fleet still applies.

``EdgeSite`` spec: ``{tenant, kind, tags, location, bundle, tokenSha256}`` (name = site id).
``SlaPolicy`` spec: ``{level: global|tenant|site, target: <tenant or site id>, policy: {...}}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from pydantic import ValidationError

from controller.config import KubeConfig
from controller.spec import FleetSpec, SiteSpec, TenantSpec

__all__ = ["CustomResourceWatch", "KubeObject", "merge_resources"]

log = logging.getLogger("fleetvl.controller.kube")
PLURALS = ("edgesites", "slapolicies")

# A custom resource as the API server returns it (decoded JSON). Its spec is whatever the
# operator wrote: read key by key and validated by the pydantic models, never trusted.
KubeObject = dict[str, Any]
# plural -> object name -> object
KubeObjects = dict[str, dict[str, KubeObject]]


def _site(obj: KubeObject) -> SiteSpec:
    spec = dict(obj.get("spec") or {})
    if "tokenSha256" in spec:
        spec["token_sha256"] = spec.pop("tokenSha256")
    return SiteSpec.model_validate({"id": obj["metadata"]["name"], **spec})


def merge_resources(
    base: FleetSpec, objects: KubeObjects
) -> tuple[FleetSpec, list[str]]:
    """The file spec with the custom resources applied; returns (spec, problems)."""
    data = base.model_dump(mode="json")
    problems: list[str] = []
    sites = {s["id"]: s for s in data["sites"]}
    for name, obj in sorted(objects.get("edgesites", {}).items()):
        try:
            s = _site(obj)
            if s.tenant not in data["tenants"]:
                data["tenants"][s.tenant] = TenantSpec().model_dump(mode="json")
            sites[s.id] = s.model_dump(mode="json")
        except (ValidationError, KeyError) as exc:
            problems.append(f"EdgeSite {name}: {exc}")
    data["sites"] = list(sites.values())
    for name, obj in sorted(objects.get("slapolicies", {}).items()):
        spec = obj.get("spec") or {}
        level, target, policy = spec.get("level"), spec.get("target"), spec.get("policy") or {}
        if level == "global":
            data["global_policy"] = {**data["global_policy"], **policy}
        elif level == "tenant" and target in data["tenants"]:
            t = data["tenants"][target]
            t["policy"] = {**(t.get("policy") or {}), **policy}
        elif level == "site" and target in sites:
            sites[target]["policy"] = {**(sites[target].get("policy") or {}), **policy}
        else:
            problems.append(f"SlaPolicy {name}: level {level!r} target {target!r} is unknown")
    try:
        return FleetSpec.model_validate(data), problems
    except ValidationError as exc:
        problems.append(f"custom resources make the spec invalid, ignored: {exc}")
        return base, problems


class CustomResourceWatch:
    """List+watch threads (the client is synchronous); ``on_update`` gets every object."""

    def __init__(
        self, config: KubeConfig, on_update: Callable[[KubeObjects], None]
    ) -> None:
        from kubernetes import client  # the controller extra; only needed when enabled

        self.config = config
        self.on_update = on_update
        self.objects: KubeObjects = {p: {} for p in PLURALS}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if config.host:
            conf = client.Configuration(host=config.host)
            if config.token:
                conf.api_key["authorization"] = config.token.get_secret_value()
                conf.api_key_prefix["authorization"] = "Bearer"
            api_client = client.ApiClient(conf)
        else:
            from kubernetes import config as kconfig

            try:
                kconfig.load_incluster_config()
            except kconfig.ConfigException:
                kconfig.load_kube_config()
            api_client = client.ApiClient()
        self.api = client.CustomObjectsApi(api_client)

    def start(self) -> None:
        for plural in PLURALS:
            t = threading.Thread(
                target=self._run, args=(plural,), daemon=True, name=f"kube-watch-{plural}"
            )
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _list(self, plural: str) -> str:
        c = self.config
        # Typed `object` by the client: the decoded JSON list ({"items": [...], "metadata"}).
        res = cast(
            KubeObject,
            self.api.list_namespaced_custom_object(c.group, c.version, c.namespace, plural),
        )
        with self._lock:
            self.objects[plural] = {o["metadata"]["name"]: o for o in res.get("items", [])}
        self._publish()
        return str(res["metadata"]["resourceVersion"])

    def _publish(self) -> None:
        with self._lock:
            snapshot = {p: dict(v) for p, v in self.objects.items()}
        self.on_update(snapshot)

    def _run(self, plural: str) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        c = self.config
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list(plural)
                w = watch.Watch()
                for ev in w.stream(
                    self.api.list_namespaced_custom_object,
                    c.group,
                    c.version,
                    c.namespace,
                    plural,
                    resource_version=rv,
                    timeout_seconds=2,
                ):
                    obj = ev["raw_object"] if "raw_object" in ev else ev["object"]
                    rv = str(obj["metadata"]["resourceVersion"])
                    with self._lock:
                        if ev["type"] == "DELETED":
                            self.objects[plural].pop(obj["metadata"]["name"], None)
                        elif ev["type"] in ("ADDED", "MODIFIED"):
                            self.objects[plural][obj["metadata"]["name"]] = obj
                    if ev["type"] != "BOOKMARK":
                        self._publish()
                    if self._stop.is_set():
                        w.stop()
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion was compacted away: list again
                    rv = None
                    continue
                log.warning("watching %s failed: %s %s", plural, exc.status, exc.reason)
                self._stop.wait(1.0)
            except Exception as exc:  # API server restarts, network: retry after a pause
                log.warning("watching %s failed: %s", plural, exc)
                self._stop.wait(1.0)
