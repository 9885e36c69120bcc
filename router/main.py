"""Run the router: HTTP (uvicorn) and gRPC in one process and one event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from pathlib import Path

import grpc
import uvicorn

from fleetvl.cache.answers import AnswerCache
from fleetvl.engines import engine_factory
from fleetvl.protocol import keepalive
from fleetvl.protocol.stored_images import ImageStore
from fleetvl.serving import listen, serve_until_stopped, stop_on_signals
from router.agents import AgentBackend
from router.backends import Backend, EngineBackend
from router.config import BackendConfig, RouterConfig
from router.grpc_backend import GrpcBackend
from router.grpc_server import add_router_servicer
from router.http_app import create_app
from router.images import MemoryBlobStore
from router.routing_watch import routing_watch
from router.service import RouterService
from router.simulated import SimulatedBackend

__all__ = ["answer_cache", "blob_store", "build_backends", "check_ports", "serve"]

log = logging.getLogger("fleetvl.router")


def build_backend(c: BackendConfig) -> Backend:
    models = tuple(c.models)
    if c.type == "engine":
        # Found by its registered name: the router imports no other tier.
        factory = engine_factory(c.engine)
        engines = [factory(Path(c.bundle or "")) for _ in range(c.slots)]
        return EngineBackend(c.name, engines, kind=c.kind, site=c.site, models=models)
    if c.type == "agent":
        return AgentBackend(c.name, c.site or "", slots=c.slots, models=models)
    if c.type == "grpc":
        return GrpcBackend(
            c.name, c.target or "", kind=c.kind, site=c.site, slots=c.slots, models=models,
            tls_ca_file=c.tls_ca_file,
        )  # fmt: skip
    return SimulatedBackend(
        c.name, kind=c.kind, site=c.site, slots=c.slots, models=models, **c.simulated
    )


def build_backends(config: RouterConfig) -> list[Backend]:
    return [build_backend(c) for c in config.backends]


def blob_store(config: RouterConfig) -> ImageStore:
    from fleetvl.cache import CacheConfig, FleetCache

    cache = CacheConfig.for_service(config.redis_url)
    return FleetCache(cache).images() if cache is not None else MemoryBlobStore()


def answer_cache(config: RouterConfig) -> AnswerCache | None:
    """The shared answer cache, looked up before admission; None without a Redis."""
    from fleetvl.cache import CacheConfig

    cache = CacheConfig.for_service(config.redis_url)
    return AnswerCache(cache) if cache is not None else None


def _tune_gc() -> None:
    """Keep the collector off the request path.

    After startup the heap holds ~10^6 long-lived objects (FastAPI, pydantic, grpc, numpy);
    every full collection walked them all, which measured as 350 ms p99 spikes at 64 clients
    and half the throughput. Freezing moves them out of the collector's view; a larger
    young generation makes collections rarer for the short-lived per-request objects.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def check_ports(config: RouterConfig) -> None:
    """Fail with a clear message when a configured port is taken (before loading models)."""
    for what, host, port in (
        ("http_port", config.http_host, config.http_port),
        ("grpc_port", config.grpc_host, config.grpc_port),
    ):
        if not port:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise OSError(
                    f"{what} {port} on {host} is not available ({exc.strerror}): stop what uses "
                    f"it or set another {what} in the router config"
                ) from None


async def serve(
    config: RouterConfig,
    *,
    backends: list[Backend] | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``); in-flight requests finish first (drain)."""
    check_ports(config)
    service = RouterService(config, backends if backends is not None else build_backends(config),
                            answers=answer_cache(config))  # fmt: skip
    app = create_app(service)
    import ssl as _ssl

    tls = config.tls
    client_ca = tls.client_ca_file if tls else None
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.http_host,
            port=config.http_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=30,
            ssl_certfile=tls.cert_file if tls else None,
            ssl_keyfile=tls.key_file if tls else None,
            ssl_ca_certs=client_ca,
            ssl_cert_reqs=_ssl.CERT_REQUIRED if client_ca else _ssl.CERT_NONE,
        )  # fmt: skip
    )
    grpc_server = None
    if config.grpc_port is not None:
        grpc_server = grpc.aio.server(options=keepalive.server_options())
        add_router_servicer(grpc_server, service, blob_store(config))
        addr = f"{config.grpc_host}:{config.grpc_port}"
        if config.tls:
            key = Path(config.tls.key_file).read_bytes()
            cert = Path(config.tls.cert_file).read_bytes()
            ca = Path(config.tls.client_ca_file).read_bytes() if config.tls.client_ca_file else None
            creds = grpc.ssl_server_credentials([(key, cert)], ca, ca is not None)
            grpc_server.add_secure_port(addr, creds)
        else:
            grpc_server.add_insecure_port(addr)
        await grpc_server.start()
        log.info("gRPC listening on %s", addr)
    stop = stop or asyncio.Event()
    if install_signals:
        stop_on_signals(stop)
    try:
        http, _ = await listen(server, config.http_host, config.http_port)
    except OSError:
        if grpc_server is not None:
            await grpc_server.stop(None)
        raise
    log.info("HTTP listening on %s:%s", config.http_host, config.http_port)
    _tune_gc()
    if ready is not None:
        ready.set()
    async with routing_watch(service, config.controller):
        await serve_until_stopped(server, http, stop)
    if grpc_server is not None:
        await grpc_server.stop(grace=30)
    await http
    if service.answers is not None:
        await service.answers.close()
