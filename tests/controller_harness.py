"""A real controller (in-process thread or `fleetvl controller run` subprocess) and real
ControlClient agents on their own event loop, plus a polling ``wait_for``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import yaml

from controller.config import ControllerConfig
from controller.main import serve
from edge_agent.control import ControlClient, ControlClientConfig
from tests.redis_servers import free_port

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "test-admin-token"


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def new_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def drop_namespace(ns: str) -> None:
    """Delete a test controller's Redis namespace (its hard state)."""
    from controller.store import ControllerStore

    async def drop() -> None:
        store = ControllerStore("redis://127.0.0.1:6379/0", ns)
        await store.drop_all()
        await store.close()

    asyncio.run(drop())


class LoopThread:
    """An asyncio loop on a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class RunningController:
    """The controller's serve() on a background loop, ports chosen here."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = ControllerConfig.model_validate(
            {"http_port": free_port(), "grpc_port": free_port(), "admin_token": ADMIN, **config}
        )
        self.lt = LoopThread()
        self.started: dict[str, Any] = {}
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        self._task = self.lt.submit(self._main(ready))
        alive = self.lt.thread.is_alive
        wait_for(lambda: ready.is_set() or self._task.done() or not alive(), 20, "controller start")
        # uvicorn ends a failed start (a port taken) with SystemExit, which stops the loop
        # itself: the task never finishes, so waiting for it would only time out.
        assert alive(), "the controller's event loop died starting up (its error is logged)"
        if self._task.done():
            self._task.result()

    async def _main(self, ready: asyncio.Event) -> None:
        self._stop = asyncio.Event()
        await serve(
            self.config, ready=ready, stop=self._stop, install_signals=False, started=self.started
        )

    @property
    def ctl(self) -> Any:
        return self.started["controller"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.config.grpc_port}"

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )

    def status(self) -> dict[str, Any]:
        with self.api() as c:
            return c.get("/api/status").raise_for_status().json()

    def close(self) -> None:
        self.lt.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._task.result(15)
        finally:
            self.lt.close()


class ControllerProcess:
    """`fleetvl controller run --config FILE` as a real process (killable with SIGKILL)."""

    def __init__(self, config: dict[str, Any], tmp: Path) -> None:
        self.config = {
            "http_port": free_port(),
            "grpc_port": free_port(),
            "admin_token": ADMIN,
            **config,
        }
        self.path = tmp / "controller.yaml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.log = tmp / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['http_port']}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.config['grpc_port']}"

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )

    def start(self) -> ControllerProcess:
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleetvl_tools.cli",
                    "controller",
                    "run",
                    "--config",
                    str(self.path),
                ],
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

        def up() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "controller process to listen")
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class RecordingHandler:
    """A real ControlHandler that records what the controller pushed.

    ``profiles`` maps a bundle digest to the metric summary the site reports while serving
    it (a stand-in for a model that is better or worse); ``fail_install`` makes installs fail.
    """

    healthy = {
        "requests": 50.0,
        "errors": 0.0,
        "escalation_rate": 0.1,
        "sla_attainment": 0.99,
        "p95_ms": 180.0,
    }

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = bundle_dir
        self.policies: list[dict[str, Any]] = []
        self.installs: list[tuple[Path, str]] = []
        self.commands: list[tuple[str, dict[str, str]]] = []
        self.active = ""
        self.profiles: dict[str, dict[str, float]] = {}
        self.lock = threading.Lock()

    def apply_policies(self, policies: dict[str, Any]) -> None:
        with self.lock:
            self.policies.append(policies)

    def install_bundle(self, bundle_dir: Path, digest: str) -> None:
        if not (bundle_dir / "manifest.json").exists():
            raise RuntimeError(f"{bundle_dir} holds no manifest.json")
        with self.lock:
            self.installs.append((bundle_dir, digest))
            self.active = digest

    def run_command(self, name: str, args: dict[str, str]) -> None:
        with self.lock:
            self.commands.append((name, args))

    def summary(self) -> dict[str, float]:
        return dict(self.profiles.get(self.active, self.healthy))

    def bundles_held(self) -> list[str]:
        if not self.bundle_dir.exists():
            return []
        return sorted(
            "sha256:" + p.name for p in self.bundle_dir.iterdir() if (p / ".verified").exists()
        )

    def last_policy(self) -> dict[str, Any] | None:
        with self.lock:
            return self.policies[-1] if self.policies else None


class Agents:
    """Real ControlClients for several sites on one background event loop."""

    def __init__(self, target: str, sites: list[str], tmp: Path, **kw: Any) -> None:
        self.lt = LoopThread()
        self.handlers: dict[str, RecordingHandler] = {}
        self.clients: dict[str, ControlClient] = {}
        self.tasks: dict[str, Any] = {}
        hb = kw.pop("heartbeat_s", 0.2)
        for site in sites:
            h = RecordingHandler(tmp / site / "bundles")
            cfg = ControlClientConfig(
                target=target,
                site=site,
                bundle_dir=h.bundle_dir,
                heartbeat_s=hb,
                reconnect_max_s=1.0,
                **kw,
            )
            self.handlers[site] = h
            self.clients[site] = self.lt.call(self._make(cfg, h))
            self.tasks[site] = self.lt.submit(self.clients[site].run())

    @staticmethod
    async def _make(cfg: ControlClientConfig, h: RecordingHandler) -> ControlClient:
        return ControlClient(cfg, h)  # built on the loop: its asyncio objects belong there

    def connected(self) -> bool:
        return all(c.connected.is_set() for c in self.clients.values())

    def close(self) -> None:
        if not self.lt.thread.is_alive():
            return  # closed already (a test may drop its agents' links itself)
        for c in self.clients.values():
            self.lt.call(c.stop())
        for t in self.tasks.values():
            t.result(10)
        self.lt.close()
