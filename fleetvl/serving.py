"""Running a service's HTTP listener until it is told to stop.

The router, the controller and the site agent each serve an ASGI app with uvicorn beside
their own gRPC listeners and state; this is the part they share: stop on SIGINT/SIGTERM, start
the listener and wait until it really listens (a port in use fails here, by name), and hold
until stopped. Each caller tears its own state down around it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Protocol

__all__ = ["HttpServer", "listen", "serve_until_stopped", "stop_on_signals"]


class HttpServer(Protocol):
    """What is used of a ``uvicorn.Server`` (the core does not import uvicorn)."""

    should_exit: bool

    @property
    def started(self) -> bool: ...

    @property
    def servers(self) -> Sequence[asyncio.Server]: ...

    async def serve(self) -> None: ...


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (call from the running loop's thread)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def listen(server: HttpServer, host: str, port: int) -> tuple[asyncio.Task[None], int]:
    """Start ``server`` (a ``uvicorn.Server``) and wait until it listens.

    Returns:
        The serving task and the bound port (the configured one, or the one chosen for 0).

    Raises:
        OSError: the listener could not start, naming the address (usually a port in use).
    """
    http = asyncio.create_task(server.serve())
    while not server.started and not http.done():
        await asyncio.sleep(0.01)
    if http.done():
        raise OSError(f"HTTP listener could not start on {host}:{port} (is the port in use?)")
    bound: int = server.servers[0].sockets[0].getsockname()[1]
    return http, bound


async def serve_until_stopped(
    server: HttpServer, http: asyncio.Task[None], stop: asyncio.Event
) -> None:
    """Hold until ``stop`` is set or the listener ends, then ask the listener to finish
    (in-flight requests get uvicorn's graceful-shutdown time); the caller awaits ``http``."""
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([http, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    server.should_exit = True
