"""Run a real router (uvicorn HTTP + grpc.aio) on loopback ports in a background thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from router.config import RouterConfig
from router.main import build_backends, serve
from tests.redis_servers import free_port


class RunningRouter:
    def __init__(self, config: dict[str, Any]) -> None:
        config = {"http_port": free_port(), "grpc_port": free_port(), **config}
        self.config = RouterConfig.model_validate(config)
        # Built here so that tests can look at what reached each backend.
        self.backends = {b.name: b for b in build_backends(self.config)}
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.config.grpc_port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ready = asyncio.Event()

        async def main() -> None:
            async def signal_ready() -> None:
                await ready.wait()
                self._ready.set()

            waiter = asyncio.create_task(signal_ready())
            try:
                await serve(
                    self.config,
                    backends=list(self.backends.values()),
                    ready=ready,
                    stop=self._stop,
                    install_signals=False,
                )
            finally:
                waiter.cancel()

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    def __enter__(self) -> RunningRouter:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("router did not start in 60 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
