"""Run the site agent: local HTTP API, uplink to the router, spool forwarder, one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import uvicorn

from edge_agent.agent import metrics
from edge_agent.agent.config import AgentConfig
from edge_agent.agent.control import AgentControl
from edge_agent.agent.engines import (
    EnginePool,
    LocalEngineFactory,
    default_factory,
    with_cache,
)
from edge_agent.agent.escalation import CloudClient
from edge_agent.agent.forwarder import Forwarder
from edge_agent.agent.http_app import create_app
from edge_agent.agent.service import AgentService
from edge_agent.agent.site_calls import site_call_handler
from edge_agent.agent.spool import Spool
from edge_agent.control import ControlClient, ControlClientConfig
from edge_agent.uplink import Uplink, UplinkConfig
from fleetvl.serving import listen, serve_until_stopped, stop_on_signals
from fleetvl.vlm.bundle_archive import archive_digest

__all__ = ["Agent", "serve"]

log = logging.getLogger("fleetvl.edge")


class Agent:
    """The assembled daemon; :meth:`start` and :meth:`stop` on the serving event loop."""

    def __init__(self, config: AgentConfig, factory: LocalEngineFactory = default_factory) -> None:
        self.config = config
        factory = with_cache(factory, config.redis_url, config.tenant)
        self.pool = EnginePool(config.bundle, config.engines, threads=config.intra_op_threads,
                               max_queue=config.max_queue, factory=factory)  # fmt: skip
        self.spool = Spool(config.spool.path, config.spool.max_bytes, config.spool.keep_s)
        self.cloud = CloudClient(config.router) if config.router else None
        self.uplink: Uplink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.service = AgentService(config, self.pool, self.spool, self.cloud, self.link_up)
        self.control: AgentControl | None = None
        self.forwarder: Forwarder | None = None
        self.control_client: ControlClient | None = None

    def link_up(self) -> bool:
        if self.config.router is None:
            return False
        if self.uplink is None:  # no outbound stream kept: assume up, calls will tell
            return True
        return self.uplink.connected.is_set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.config.controller
        state = c.bundle_dir / "pushed_policies.json" if c is not None else None
        self.control = AgentControl(self.service, loop, state)
        if self.control.restore():
            log.info("serving the policy layers the controller last pushed (%s)", state)
        self.service.observers.append(self.control.record)
        r = self.config.router
        if r is not None and r.connect:
            self.uplink = Uplink(
                UplinkConfig(
                    router=r.target, site=self.config.site, models=(self.config.model,),
                    agent_version=_version(),
                    slots=self.config.engines, api_key=r.api_key, tls_ca_file=r.tls_ca_file,
                    tls_cert_file=r.tls_cert_file, tls_key_file=r.tls_key_file,
                    backoff_s=r.backoff_s, max_backoff_s=r.max_backoff_s,
                    keepalive_s=r.keepalive_s,
                ),
                site_call_handler(self.service),
            )  # fmt: skip
            self._tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
            self._tasks.append(asyncio.create_task(self._watch_link(), name="link-watch"))
        self.control_client = await self._control_client()
        if self.control_client is not None:
            self._tasks.append(asyncio.create_task(self.control_client.run(), name="control"))
        if self.cloud is not None:
            self.forwarder = Forwarder(self.spool, self.cloud, self.config.spool, self.link_up,
                                       self.service.spool_wakeup)  # fmt: skip
            self._tasks.append(asyncio.create_task(self.forwarder.run(), name="forwarder"))

    async def _control_client(self) -> ControlClient | None:
        """The control-plane client for the ``controller:`` section, if there is one."""
        c = self.config.controller
        if c is None or self.control is None:
            return None
        # The address the controller knows this bundle by, so it is not sent again. Hashing
        # a bundle of hundreds of MB takes a second: off the event loop.
        bundle = self.service.pool.bundle
        self.control.archive_digest = await asyncio.to_thread(archive_digest, bundle)
        return ControlClient(
            ControlClientConfig(
                target=c.target, site=self.config.site, agent_version=_version(),
                token=c.token, heartbeat_s=c.heartbeat_s, bundle_dir=c.bundle_dir,
                tls_ca_file=c.tls_ca_file, tls_cert_file=c.tls_cert_file,
                tls_key_file=c.tls_key_file, active_bundle=self.control.archive_digest,
            ),
            self.control,
            sources=self.control.source_health,  # heartbeats carry service.health's snapshot
        )  # fmt: skip

    async def _watch_link(self) -> None:
        """Mirror the uplink state in metrics and wake the forwarder when it comes back."""
        assert self.uplink is not None
        was = False
        while True:
            up = self.uplink.connected.is_set()
            metrics.UPLINK_UP.set(1 if up else 0)
            if up and not was:
                self.service.spool_wakeup.set()
            was = up
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.control_client is not None:
            with contextlib.suppress(Exception):
                await self.control_client.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.cloud is not None:
            await self.cloud.close()
        self.spool.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleetvl")
    except PackageNotFoundError:
        return "0.0.0"


async def serve(
    config: AgentConfig,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
    factory: LocalEngineFactory = default_factory,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``). The spool needs no drain: it is durable."""
    agent = Agent(config, factory)
    await agent.start()
    app = create_app(agent.service)
    app.state.agent = agent
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.http_host, port=config.http_port, log_level="warning",
        access_log=False, lifespan="off", timeout_graceful_shutdown=10,
    ))  # fmt: skip
    stop = stop or asyncio.Event()
    if install_signals:
        stop_on_signals(stop)
    try:
        http, port = await listen(server, config.http_host, config.http_port)
    except OSError:
        await agent.stop()
        raise
    log.warning("site agent %s listening on http://%s:%d", config.site, config.http_host, port)
    print(f"fleetvl-edge listening on {config.http_host}:{port}", flush=True)  # noqa: T201
    gc.collect()
    gc.freeze()  # the startup heap out of the collector's view (see router.main)
    if ready is not None:
        ready.set()
    await serve_until_stopped(server, http, stop)
    await http
    await agent.stop()
