"""Child processes of ``fleetvl up``: each in its own process group with its own log file,
readiness polled, and all of them stopped in reverse start order (SIGINT, then SIGTERM, then
SIGKILL to the whole group) whatever state start-up reached."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fleetvl.errors import FleetVLError

__all__ = ["Child", "Children", "StartupError", "check_ports_free", "wait_for"]

T = TypeVar("T")


class StartupError(FleetVLError):
    """A component did not come up; the message names it and points at its log."""


def check_ports_free(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Refuse to start when a configured port is taken, naming it and its config key."""
    taken = []
    for name, port in ports.items():
        with socket.socket() as s:
            # As the servers bind: a port in TIME_WAIT from a previous run is free to them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                taken.append(f"{host}:{port} ({name})")
    if taken:
        raise StartupError(
            "port(s) already in use: " + ", ".join(taken) + ". Stop what holds them or pick "
            "another base with --base-port / FLEETVL_UP_BASE_PORT."
        )


def wait_for(check: Callable[[], T], timeout: float, what: str,
             alive: Callable[[], None] | None = None) -> T:  # fmt: skip
    """Poll ``check`` until it returns something truthy; exceptions count as not yet.
    ``alive`` raises when the process being waited for has died (no point waiting on)."""
    end = time.monotonic() + timeout
    last: BaseException | None = None
    delay = 0.05
    while time.monotonic() < end:
        if alive is not None:
            alive()
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # connection refused while it starts
            last = exc
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise StartupError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last})")


def _child_setup(sig: int) -> Callable[[], None]:
    """Run in the child before exec: the stop signals at their defaults (a launcher started as
    a background job inherits SIGINT ignored, and so would every component: none would stop
    on SIGINT), and on Linux ``sig`` delivered if `fleetvl up` itself is killed (SIGKILL runs
    none of its clean-up), so no component outlives the command."""
    arm_pdeathsig: Callable[[], None] | None = None
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1

        def arm_pdeathsig() -> None:
            libc.prctl(pr_set_pdeathsig, sig)

    def setup() -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        if arm_pdeathsig is not None:
            arm_pdeathsig()

    return setup


class Child:
    """One component: a command, its log file, its process group."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None,
                 stop_signal: int = signal.SIGINT) -> None:  # fmt: skip
        self.name = name
        self.args = args
        self.log = log
        self.env = env
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with open(self.log, "ab") as out:
            # A session of its own: Ctrl-C in the terminal reaches only `fleetvl up`, which
            # then stops each child in order instead of all of them at once.
            self.proc = subprocess.Popen(
                self.args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_child_setup(self.stop_signal),
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise StartupError(
                f"{self.name} exited with status {self.proc.returncode} during start-up; "
                f"last lines of {self.log}:\n{self.tail()}"
            )

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + x for x in text.splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(5)
        # Grandchildren left in the group (workers of a killed parent) go too.
        self._signal_group(signal.SIGKILL)


class Children:
    """Every started component, stopped last-first."""

    def __init__(self, cwd: Path, say: Callable[[str], None]) -> None:
        self.cwd = cwd
        self.say = say
        self.items: list[Child] = []

    def start(self, child: Child) -> Child:
        self.items.append(child.start(self.cwd))
        return child

    def stop_all(self) -> None:
        for child in reversed(self.items):
            if child.proc is None:
                continue
            was_running = child.running()
            t0 = time.monotonic()
            child.stop()
            if was_running:
                self.say(f"  stopped {child.name} ({time.monotonic() - t0:.1f} s)")
        self.items.clear()


def python_cli(*args: str) -> list[str]:
    """``fleetvl ARGS`` with this interpreter (works from a venv that is not on PATH)."""
    return [sys.executable, "-m", "fleetvl_tools.cli", *args]


def venv_bin(name: str) -> str:
    """A console script installed next to this interpreter (ray, serve)."""
    cand = Path(sys.executable).with_name(name)
    return str(cand) if cand.exists() else name
