"""Run the controller: admin HTTP (uvicorn) and agent sessions (gRPC) in one event loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TypedDict

import grpc
import uvicorn

from controller.api import create_app
from controller.config import ControllerConfig
from controller.service import Controller
from fleetvl.protocol import control_pb2_grpc as cpb_grpc
from fleetvl.serving import listen, serve_until_stopped, stop_on_signals

__all__ = ["serve"]

log = logging.getLogger("fleetvl.controller")


def _grpc_server(ctl: Controller, config: ControllerConfig) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            # Agents sit behind NATs that drop idle flows; keep sessions alive both ways.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    cpb_grpc.add_ControlServicer_to_server(ctl.servicer, server)
    addr = f"{config.grpc_host}:{config.grpc_port}"
    try:
        if config.tls:
            key = Path(config.tls.key_file).read_bytes()
            cert = Path(config.tls.cert_file).read_bytes()
            ca = Path(config.tls.client_ca_file).read_bytes() if config.tls.client_ca_file else None
            creds = grpc.ssl_server_credentials([(key, cert)], ca, ca is not None)
            port = server.add_secure_port(addr, creds)
        else:
            port = server.add_insecure_port(addr)
    except RuntimeError:  # grpc reports a taken port this way in some versions
        port = 0
    if port == 0:
        raise OSError(f"gRPC port {addr} is not available: set another grpc_port")
    return server, port


class Started(TypedDict, total=False):
    """What :func:`serve` reports once listening."""

    controller: Controller
    http_port: int
    grpc_port: int


async def serve(
    config: ControllerConfig,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
    started: Started | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``).

    Args:
        started: filled with ``controller``, ``http_port`` and ``grpc_port`` once listening
            (ports may have been 0 in the config).
    """
    public = config.public_url or f"http://{config.http_host}:{config.http_port}"
    ctl = Controller(config, public)
    await ctl.start()
    try:
        grpc_server, grpc_port = _grpc_server(ctl, config)
    except OSError:
        await ctl.close()
        raise
    await grpc_server.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ctl),
            host=config.http_host,
            port=config.http_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    )
    stop = stop or asyncio.Event()
    if install_signals:
        stop_on_signals(stop)
    try:
        http, http_port = await listen(server, config.http_host, config.http_port)
    except OSError:
        await grpc_server.stop(None)
        await ctl.close()
        raise
    if config.public_url is None and config.http_port == 0:
        ctl.desired.bundle_base_url = f"http://{config.http_host}:{http_port}"
    log.info('{"event": "listening", "http_port": %d, "grpc_port": %d}', http_port, grpc_port)
    if started is not None:
        started.update({"controller": ctl, "http_port": http_port, "grpc_port": grpc_port})
    if ready is not None:
        ready.set()
    await serve_until_stopped(server, http, stop)
    await ctl.close()
    await grpc_server.stop(grace=2)
    await http
