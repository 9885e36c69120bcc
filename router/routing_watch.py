"""Follow the controller's routing state: SLA layers and the sites whose agents may dial in.

The controller owns policy (``controller.routing_feed``). A router configured with
``controller:`` holds one ``WatchRouting`` stream and applies each state whole: the policy
layers replace the config's ``policies``; a site the controller adds gets an agent backend
(its agent may connect from then on); a site it removes is retired (its agent is turned away
and edge-only requests for it are refused). When the controller is away the router keeps the
last state it applied (a fleet keeps serving through a control-plane outage) and reconnects
with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
from collections.abc import AsyncIterator

import grpc
from pydantic import ValidationError

from fleetvl.protocol import control_pb2 as cpb
from fleetvl.protocol import control_pb2_grpc as cpb_grpc
from fleetvl.protocol.channels import TlsFiles, open_channel
from router import metrics
from router.agents import AgentBackend
from router.config import ControllerLink, PolicyConfig
from router.service import RouterService
from router.tickets import log_line

__all__ = ["apply_routing", "routing_watch", "watch_routing"]

log = logging.getLogger("fleetvl.router")
MAX_RETRY_S = 30.0


def apply_routing(service: RouterService, state: cpb.RoutingState, link: ControllerLink) -> None:
    """Apply one routing state. Raises ValueError (nothing applied) when it does not validate."""
    try:
        policies = PolicyConfig.model_validate(json.loads(state.policies_json))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"routing state {state.version} does not validate: {exc}") from exc
    sites = {s.site for s in state.sites}
    agents = {
        b.site: b for b in service.backends.values() if isinstance(b, AgentBackend) and b.site
    }
    for site in sorted(sites - agents.keys()):
        name = f"agent-{site}"
        service.add_backend(
            AgentBackend(name, site, slots=link.agent_slots, models=tuple(link.agent_models))
        )
    for site, backend in agents.items():
        backend.retire(site not in sites)
    service.policies = policies
    metrics.ROUTING_VERSION.set(state.version)
    log_line(event="routing.applied", version=state.version, sites=len(sites),
             tenants=len(policies.tenants), site_policies=len(policies.sites))  # fmt: skip


def _channel(link: ControllerLink) -> grpc.aio.Channel:
    tls = None
    if link.tls_ca_file:
        tls = TlsFiles(link.tls_ca_file, link.tls_cert_file, link.tls_key_file,
                       link.tls_server_name)  # fmt: skip
    return open_channel(link.target, tls)


async def watch_routing(service: RouterService, link: ControllerLink) -> None:
    """Run until cancelled: watch, apply, reconnect with jittered exponential backoff."""
    auth = (("authorization", f"Bearer {link.token.get_secret_value()}"),)
    retry = link.retry_s
    while True:
        async with _channel(link) as channel:
            stub = cpb_grpc.ControlStub(channel)
            try:
                call = stub.WatchRouting(
                    cpb.RoutingWatch(router_id=socket.gethostname()), metadata=auth
                )
                async for state in call:
                    retry = link.retry_s
                    try:
                        apply_routing(service, state, link)
                        metrics.ROUTING_UPDATES.labels("applied").inc()
                    except ValueError as exc:  # keep serving on the last good state
                        metrics.ROUTING_UPDATES.labels("invalid").inc()
                        log.error("%s", exc)
                    metrics.CONTROLLER_CONNECTED.set(1)
            except grpc.aio.AioRpcError as exc:
                metrics.CONTROLLER_ERRORS.labels(exc.code().name).inc()
                log.warning("routing watch on %s: %s %s", link.target, exc.code().name,
                            exc.details())  # fmt: skip
        metrics.CONTROLLER_CONNECTED.set(0)
        await asyncio.sleep(retry * random.uniform(0.8, 1.2))
        retry = min(retry * 2, MAX_RETRY_S)


@contextlib.asynccontextmanager
async def routing_watch(service: RouterService, link: ControllerLink | None) -> AsyncIterator[None]:
    """Watch the controller (when the config links one) while the body runs."""
    task = asyncio.create_task(watch_routing(service, link)) if link else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
