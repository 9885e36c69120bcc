"""Throwaway real ``redis-server`` processes for fault tests (nothing kept on disk)."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time

import redis


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Test servers listen on ports picked here and bound a moment later. A port the kernel hands
# out for bind(0) lies in its ephemeral range, where any outgoing connection (a Redis or HTTP
# client, Ray) may take it in between (seen: a controller test failed on "address already in
# use"). Ports below that range are never given to outgoing connections, and from 20000 up
# they also miss Ray's default worker ports (10002-19999).
PORT_RANGE = (20000, max(min(32768, _ephemeral_low()), 25000))


def free_port() -> int:
    """A port on 127.0.0.1 that was free just now, outside the kernel's ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


class RedisServer:
    def __init__(self, port: int | None = None, *args: str) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.args = args
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start_with_password(self, password: str) -> RedisServer:
        return self.start(password)

    def start(self, password: str | None = None) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> RedisServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
