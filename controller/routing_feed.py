"""What routers watch: every SLA layer and the sites whose agents may dial them.

The controller is the one owner of policy. Agents get their site's layers pushed down their
sessions (``controller.agent_service``); routers hold a ``WatchRouting`` stream and get the
whole routing state now and again after every change to the desired state, so a policy set
through the admin API (or a custom resource) reaches the edge and the cloud ingress alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator

import grpc

from controller import metrics as m
from controller.desired import DesiredState
from fleetvl.protocol import control_pb2 as cpb

__all__ = ["RoutingFeed"]

log = logging.getLogger("fleetvl.controller")


class RoutingFeed:
    def __init__(self, desired: DesiredState, token: str) -> None:
        self.desired = desired
        self._token_sha = hashlib.sha256(token.encode()).digest()
        self._watchers: set[asyncio.Event] = set()

    def state(self) -> cpb.RoutingState:
        d = self.desired
        sites = d.sites()
        tenants = {t: d.tenant_policy(t) for t in d.spec.tenants}
        own = {s: d.site_policy(spec) for s, spec in sites.items()}
        policies = {
            "global": d.global_policy().model_dump(mode="json"),
            "tenants": {
                t: p.model_dump(mode="json", exclude_none=True) for t, p in tenants.items() if p
            },
            "sites": {s: p.model_dump(mode="json", exclude_none=True) for s, p in own.items() if p},
        }
        return cpb.RoutingState(
            version=d.policy_version,
            policies_json=json.dumps(policies, sort_keys=True),
            sites=[cpb.SiteRoute(site=s, tenant=spec.tenant) for s, spec in sorted(sites.items())],
        )

    def changed(self) -> None:
        for ev in self._watchers:
            ev.set()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def watch(
        self, request: cpb.RoutingWatch, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.RoutingState]:
        md = dict(context.invocation_metadata() or ())
        given = str(md.get("authorization", "")).removeprefix("Bearer ").strip()
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._token_sha):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong router token")
        changed = asyncio.Event()
        self._watchers.add(changed)
        m.ROUTERS_WATCHING.set(len(self._watchers))
        log.info(json.dumps({"ts": round(time.time(), 3), "event": "router.watch",
                             "router": request.router_id, "peer": context.peer()}))  # fmt: skip
        try:
            sent = b""
            while True:
                state = self.state()
                wire = state.SerializeToString(deterministic=True)
                if wire != sent:
                    sent = wire
                    m.ROUTING_PUSHES.inc()
                    yield state
                await changed.wait()
                changed.clear()
        finally:
            self._watchers.discard(changed)
            m.ROUTERS_WATCHING.set(len(self._watchers))
