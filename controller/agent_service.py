"""The ``fleetvl.control.v1.Control`` service: agent sessions and pushes down their streams.

Each agent holds one ``Connect`` stream. After ``register`` the controller sends a welcome and
then the site's full desired state (policies, bundle assignment): that is how a reconnecting
agent, or every agent after a controller restart, resynchronizes. Later changes are pushed by
:meth:`Pusher.sync`, which compares the desired state with what was last sent on the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from controller import metrics as m
from controller.alerts import OUT_OF_SCOPE, SiteAlerts, SourceReport
from controller.desired import DesiredState, UnknownObject
from controller.routing_feed import RoutingFeed
from controller.sessions import AgentSession, PendingPush, SessionRegistry
from controller.store import ControllerStore
from fleetvl.protocol import control_pb2 as cpb
from fleetvl.protocol import control_pb2_grpc as cpb_grpc

__all__ = ["ControlServicer", "Pusher"]

log = logging.getLogger("fleetvl.controller")
REGISTER_TIMEOUT_S = 10.0


def log_line(**fields: object) -> None:
    log.info(json.dumps({"ts": round(time.time(), 3), **fields}, default=str))


class Pusher:
    """Brings connected agents to the desired state (soft: what was sent on this stream)."""

    def __init__(self, desired: DesiredState, registry: SessionRegistry) -> None:
        self.desired = desired
        self.registry = registry

    async def on_change(self, sites: set[str] | None) -> None:
        for s in self.registry.connected():
            if sites is None or s.site in sites:
                self.sync(s)

    def _send(self, s: AgentSession, msg: cpb.ControllerMessage, pending: PendingPush) -> None:
        msg.push_id = uuid.uuid4().hex[:16]
        s.pending[msg.push_id] = pending
        s.queue.put_nowait(msg)
        m.PUSHES.labels(pending.kind).inc()

    def sync(self, s: AgentSession) -> None:
        try:
            layers = json.dumps(self.desired.policy_layers(s.site), sort_keys=True)
            ref = self.desired.assigned_bundle(s.site)
        except UnknownObject:  # the site was removed from the spec: leave the agent as is
            return
        now = time.time()
        if layers != s.sent_policy:
            s.sent_policy = layers
            v = self.desired.policy_version
            msg = cpb.ControllerMessage(policies=cpb.PolicyPush(version=v, layers_json=layers))
            self._send(s, msg, PendingPush("policies", now, version=v))
        if ref is not None and ref.digest != s.sent_bundle:
            s.sent_bundle = ref.digest
            if ref.digest != s.active_bundle:
                url = ref.url or ""
                own = url.startswith(self.desired.bundle_base_url + "/bundles/")
                b = cpb.BundleAssignment(
                    digest=ref.digest, url=url, size=ref.size or 0, send_credential=own
                )
                self._send(
                    s,
                    cpb.ControllerMessage(bundle=b),
                    PendingPush("bundle", now, digest=ref.digest),
                )

    def command(self, s: AgentSession, name: str, args: dict[str, str]) -> str:
        msg = cpb.ControllerMessage(command=cpb.Command(name=name, args=args))
        self._send(s, msg, PendingPush("command", time.time()))
        return msg.push_id


class ControlServicer(cpb_grpc.ControlServicer):
    def __init__(
        self,
        desired: DesiredState,
        registry: SessionRegistry,
        pusher: Pusher,
        store: ControllerStore,
        controller_id: str,
        heartbeat_s: float,
        site_identity: bool = False,
        alerts: SiteAlerts | None = None,
        routing: RoutingFeed | None = None,
    ) -> None:
        self.desired = desired
        self.registry = registry
        self.pusher = pusher
        self.store = store
        self.controller_id = controller_id
        self.heartbeat_s = heartbeat_s
        self.site_identity = site_identity
        self.alerts = alerts
        self.routing = routing

    async def Connect(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[cpb.AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.ControllerMessage]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), REGISTER_TIMEOUT_S)
        except (TimeoutError, StopAsyncIteration):
            m.SESSIONS.labels("no_register").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send `register` first")
        if first.WhichOneof("kind") != "register" or not first.register.site:
            m.SESSIONS.labels("no_register").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `register` (site)"
            )
        reg = first.register
        await self._authorize(reg.site, context)
        s = self.registry.open(reg, time.time())
        m.SESSIONS.labels("ok").inc()
        m.AGENTS_CONNECTED.set(len(self.registry.connected()))
        log_line(
            event="agent.register",
            site=reg.site,
            agent_version=reg.agent_version,
            active_bundle=reg.active_bundle,
            held=len(reg.bundles_held),
            peer=context.peer(),
        )
        yield cpb.ControllerMessage(
            welcome=cpb.Welcome(controller_id=self.controller_id, heartbeat_s=self.heartbeat_s)
        )
        self.pusher.sync(s)
        reader = asyncio.create_task(self._read(s, request_iterator))
        try:
            while (msg := await s.queue.get()) is not None:
                yield msg
        finally:
            reader.cancel()
            self.registry.close(s)
            m.AGENTS_CONNECTED.set(len(self.registry.connected()))
            log_line(event="agent.disconnect", site=s.site)

    async def WatchRouting(  # noqa: N802 - gRPC method name
        self, request: cpb.RoutingWatch, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.RoutingState]:
        if self.routing is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this controller feeds no routers")
        else:
            async for state in self.routing.watch(request, context):
                yield state

    async def _authorize(self, site_id: str, context: grpc.aio.ServicerContext) -> None:
        try:
            site = self.desired.site(site_id)
        except UnknownObject as exc:
            m.SESSIONS.labels("unknown_site").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if self.site_identity:
            auth = context.auth_context() or {}
            names = {
                v.decode()
                for k in ("x509_common_name", "x509_subject_alternative_name")
                for v in auth.get(k, [])
            }
            if site_id not in names:
                m.SESSIONS.labels("wrong_identity").inc()
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the client certificate ({sorted(names) or 'none'}) is not for site "
                    f"{site_id!r}",
                )
        if site.token_sha256 is None:
            return
        md = dict(context.invocation_metadata() or ())
        token = str(md.get("authorization", "")).removeprefix("Bearer ").strip()
        if hashlib.sha256(token.encode()).hexdigest() != site.token_sha256:
            m.SESSIONS.labels("unauthenticated").inc()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong credential for {site_id!r}"
            )

    async def _read(self, s: AgentSession, it: AsyncIterator[cpb.AgentMessage]) -> None:
        try:
            async for msg in it:
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat":
                    m.HEARTBEATS.inc()
                    now = time.time()
                    self.registry.heartbeat(s, msg.heartbeat, now)
                    self._health(s.site, msg.heartbeat, now)
                elif kind == "ack":
                    await self._ack(s, msg.ack)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception:  # e.g. Redis down while auditing: end this session, not the server
            log.exception("agent session %s failed", s.site)
        finally:
            with contextlib.suppress(Exception):
                s.queue.put_nowait(None)

    def _health(self, site: str, hb: cpb.Heartbeat, now: float) -> None:
        """Site health alerts from the heartbeat's per-source report; one log line per
        alert raised or cleared (not per heartbeat)."""
        if self.alerts is None:
            return
        reports = [SourceReport.from_proto(x) for x in hb.sources]
        raised, cleared = self.alerts.observe(site, reports, now)
        for a in raised:
            log_line(event="alert.raised", **a.public())
        for a in cleared:
            log_line(
                event="alert.cleared",
                site=a.site,
                source=a.source,
                kind=a.kind,
                message=a.message,
                since=a.since,
                lasted_s=round(now - a.since, 1),
            )
        if raised or cleared:
            m.SITE_ALERTS.labels(OUT_OF_SCOPE).set(self.alerts.count(OUT_OF_SCOPE))

    async def _ack(self, s: AgentSession, ack: cpb.Ack) -> None:
        p = s.pending.pop(ack.push_id, None)
        if p is None:
            return
        m.PUSH_ACK.labels(p.kind).observe(time.time() - p.sent_at)
        if p.kind == "policies" and ack.ok:
            s.policy_version = max(s.policy_version, p.version)
        elif p.kind == "bundle":
            if ack.ok:
                s.active_bundle, s.bundle_error = p.digest, None
            else:
                s.bundle_error = {"digest": p.digest, "error": ack.error, "ts": time.time()}
                s.sent_bundle = ""  # the next change (e.g. a re-assignment) tries again
                await self.store.audit(
                    f"agent:{s.site}", "bundle.refused", ack.error, site=s.site, digest=p.digest
                )
        if not ack.ok:
            m.PUSH_FAILURES.labels(p.kind).inc()
            log_line(event="push.failed", site=s.site, kind=p.kind, error=ack.error)
