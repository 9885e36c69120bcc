"""Real processes for the site-agent tests: a router (``fleetvl router run``), a site agent
(``fleetvl edge run``), and a fake WAN link between them that the test can cut.

:class:`FakeWanLink` is a fake of the outside world (the site's uplink), named as one: a TCP
relay on loopback whose ``cut()`` drops every connection and refuses new ones, like a dead
uplink, and whose ``restore()`` lets traffic through again on the same port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from tests.redis_servers import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


def wait_for(check: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy (exceptions count as not yet)."""
    end = time.monotonic() + timeout
    last: BaseException | None = None
    delay = 0.01
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # e.g. connection refused while starting
            last = exc
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last error: {last})")


class FakeWanLink:
    """A fake uplink (TCP relay) from ``port`` to ``target_port`` that can be cut, or frozen
    (connections stay open and nothing gets through: a hung peer)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def restore(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    start = restore

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class Proc:
    """A ``fleetvl`` sub-command as a child process, its output in a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetvl_tools.cli", *self.args], cwd=ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash or power loss, as far as the agent knows)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_router(tmp: Path, backends: list[dict[str, Any]], **extra: Any) -> tuple[Proc, str, int]:
    """A router process; returns it, its HTTP URL and its gRPC port."""
    http, grpc_port = free_port(), free_port()
    cfg = {"http_port": http, "grpc_port": grpc_port, "backends": backends, **extra}
    path = tmp / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = Proc(["router", "run", "--config", str(path)], tmp / "router.log").start()
    url = f"http://127.0.0.1:{http}"
    wait_for(lambda: httpx.get(url + "/healthz").status_code == 200, 60, "router start")
    return proc, url, grpc_port


def start_agent(tmp: Path, config: dict[str, Any], name: str = "agent") -> tuple[Proc, str]:
    """A site agent process on a fresh port; returns it and its URL."""
    config = {**config, "http_port": config.get("http_port") or free_port()}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = Proc(["edge", "run", "--config", str(path)], tmp / f"{name}.log").start()
    url = f"http://127.0.0.1:{config['http_port']}"

    def up() -> bool:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"agent exited: {proc.output()[-2000:]}")
        return httpx.get(url + "/healthz").status_code == 200

    wait_for(up, 60, "agent start")
    return proc, url


def metric(url: str, name: str, **labels: str) -> float:
    """A Prometheus sample's value from ``url``/metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        base, _, lab = key.partition("{")
        if base == name and all(part in lab for part in want.split(",") if part):
            total += float(value)
    return total
