"""The controller's parts wired together (one per process): desired state, sessions, rollouts.

Hard state (Redis): run-time policies, assignments, bundles, sites, rollouts, audit log.
Soft state (memory): agent sessions and their metrics, rebuilt as agents re-register; site
health alerts (``controller.alerts``), rebuilt from the agents' heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

from controller import metrics as m
from controller.agent_service import ControlServicer, Pusher
from controller.alerts import OUT_OF_SCOPE, SiteAlerts
from controller.bundles import BundleStore
from controller.config import ControllerConfig
from controller.desired import DesiredState
from controller.rollout import RolloutError, RolloutManager, RolloutState
from controller.routing_feed import RoutingFeed
from controller.sessions import SessionRegistry
from controller.store import ControllerStore, JsonObject

if TYPE_CHECKING:  # imported when the watch is enabled (the kubernetes client is an extra)
    from controller.kube import CustomResourceWatch, KubeObjects

__all__ = ["Controller"]

log = logging.getLogger("fleetvl.controller")


class Controller:
    def __init__(self, config: ControllerConfig, bundle_base_url: str) -> None:
        self.config = config
        self.id = f"ctl-{uuid.uuid4().hex[:8]}"
        self.store = ControllerStore(config.redis_url, config.namespace)
        self.desired = DesiredState(config.fleet_spec(), self.store, bundle_base_url)
        self.registry = SessionRegistry()
        self.pusher = Pusher(self.desired, self.registry)
        token = config.router_token or config.admin_token
        self.routing = RoutingFeed(self.desired, token.get_secret_value())
        self.desired.on_change = self._on_change
        self.rollouts = RolloutManager(self.desired, self.registry, self.store)
        self.bundles = BundleStore(config.bundle_dir)
        a = config.alerts
        self.alerts = SiteAlerts(a.out_of_scope_min, a.out_of_scope_window)
        m.SITE_ALERTS.labels(OUT_OF_SCOPE).set(0)
        self.servicer = ControlServicer(
            self.desired,
            self.registry,
            self.pusher,
            self.store,
            self.id,
            config.heartbeat_s,
            site_identity=bool(config.tls and config.tls.site_identity),
            alerts=self.alerts,
            routing=self.routing,
        )
        self._ticker: asyncio.Task[None] | None = None
        self.base_spec = self.desired.spec
        self.kube: CustomResourceWatch | None = None
        self.kube_problems: list[str] = []
        self._kube_lock = asyncio.Lock()

    async def _on_change(self, sites: set[str] | None) -> None:
        await self.pusher.on_change(sites)
        self.routing.changed()

    async def start(self) -> None:
        """Rebuild hard state from Redis, start declared rollouts, begin evaluating them."""
        await self.store.ping()
        await self.desired.load()
        await self.rollouts.load()
        for plan in self.desired.spec.rollouts:
            if plan.id not in self.rollouts.rollouts:
                try:
                    await self.rollouts.start(plan, "spec", "declared in the fleet spec")
                except RolloutError as exc:
                    log.warning("spec rollout not started: %s", exc)
        self._ticker = asyncio.create_task(self._tick_loop())
        if self.config.kube.enabled:
            from controller.kube import CustomResourceWatch

            loop = asyncio.get_running_loop()

            def on_update(objects: KubeObjects) -> None:
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._apply_kube(objects)))

            self.kube = kube = CustomResourceWatch(self.config.kube, on_update)
            kube.start()

    async def _apply_kube(self, objects: KubeObjects) -> None:
        from controller.kube import merge_resources

        async with self._kube_lock:
            spec, problems = merge_resources(self.base_spec, objects)
            for p in problems:
                if p not in self.kube_problems:
                    log.warning("custom resource skipped: %s", p)
            self.kube_problems = problems
            if spec != self.desired.spec:
                n = sum(len(v) for v in objects.values())
                await self.desired.set_spec(spec, "kube", f"{n} custom resources")

    async def _tick_loop(self) -> None:
        while True:
            try:
                await self.rollouts.tick()
            except Exception:  # a bad tick must not stop future ones
                log.exception("rollout tick failed")
            await asyncio.sleep(self.config.rollout_tick_s)

    async def close(self) -> None:
        if self.kube is not None:
            await asyncio.to_thread(self.kube.stop)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for s in self.registry.connected():
            s.queue.put_nowait(None)
        await self.store.close()

    def rollout_views(self) -> list[JsonObject]:
        """Every rollout's admin-API view, oldest first."""
        ordered = sorted(self.rollouts.rollouts.values(), key=_started_at)
        return [r.public(len(self.rollouts.matching(r.plan))) for r in ordered]

    def status(self) -> JsonObject:
        """Fleet status: every declared site with its agent's soft state, and rollouts."""
        now = time.time()
        sites = []
        for sid, spec in sorted(self.desired.sites().items()):
            sess = self.registry.sessions.get(sid)
            ref = self.desired.assigned_bundle(sid)
            row: JsonObject = {
                "id": sid,
                "tenant": spec.tenant,
                "kind": spec.kind,
                "tags": spec.tags,
                "location": spec.location.name,
                "desired_bundle": ref.digest if ref else None,
                "desired_bundle_name": self.desired.bundle_name(ref.digest) if ref else None,
            }
            active = sess.active_bundle if sess is not None else ""
            if sess is None:
                row.update(
                    connected=False,
                    healthy=False,
                    last_heartbeat=None,
                    active_bundle="",
                    requests_per_min=0.0,
                )
            else:
                row.update(sess.public(now, self.config.stale_after_s))
            row["active_bundle_name"] = self.desired.bundle_name(active) if active else ""
            row["in_sync"] = bool(ref is None or active == ref.digest)
            row["alerts"] = [a.public() for a in self.alerts.alerts(sid)]
            sites.append(row)
        return {
            "controller_id": self.id,
            "ts": now,
            "policy_version": self.desired.policy_version,
            "sites": sites,
            "alerts": [a.public() for a in self.alerts.alerts()],
            "totals": {
                "sites": len(sites),
                "connected": sum(1 for s in sites if s["connected"]),
                "healthy": sum(1 for s in sites if s["healthy"]),
                "alerts": self.alerts.count(OUT_OF_SCOPE),
            },
            "rollouts": self.rollout_views(),
        }


def _started_at(r: RolloutState) -> float:
    """When the rollout started: the time of its first history (audit) entry, 0 if none."""
    ts = r.history[0].get("ts", 0) if r.history else 0
    return float(ts) if isinstance(ts, int | float) else 0.0
