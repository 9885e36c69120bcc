"""`fleetvl up`'s process handling with real processes: a child that ignores its stop signal
is escalated to SIGKILL, grandchildren left in its group go too, a dead child is reported with
its log, and a taken port is named."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from fleetvl_tools.launch.procs import Child, Children, StartupError, check_ports_free, wait_for

# Ignores SIGINT, starts a grandchild in its own process group, then waits forever.
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1].startswith("Z")


def test_a_stubborn_child_and_its_grandchild_are_stopped(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    child = Child("stubborn", [sys.executable, "-c", STUBBORN], log).start(tmp_path)
    grandchild = int(wait_for(lambda: log.read_text().strip(), 20, "the grandchild's pid"))
    t0 = time.monotonic()
    child.stop(grace_s=0.5)
    assert time.monotonic() - t0 < 10
    assert not child.running()
    wait_for(lambda: _gone(grandchild), 10, "the grandchild to be killed with the group")


def test_children_stop_last_started_first(tmp_path: Path) -> None:
    said: list[str] = []
    kids = Children(tmp_path, said.append)
    for name in ("first", "second", "third"):
        kids.start(Child(name, [sys.executable, "-c", "import time; time.sleep(300)"],
                         tmp_path / f"{name}.log"))  # fmt: skip
    kids.stop_all()
    assert [line.split()[1] for line in said] == ["third", "second", "first"]
    assert kids.items == []


def test_a_child_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "dies.log"
    code = "import sys; print('error: invalid site config: engines must be >= 1'); sys.exit(2)"
    child = Child("agent x", [sys.executable, "-c", code], log).start(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(StartupError) as err:
        wait_for(lambda: False, 60, "agent x", child.check_alive)
    assert time.monotonic() - t0 < 20  # not the whole timeout
    assert "agent x exited with status 2 during start-up" in str(err.value)
    assert "engines must be >= 1" in str(err.value)


def test_a_taken_port_is_named_with_its_config_key() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(StartupError, match=rf"127\.0\.0\.1:{port} \(ports\.router_http\)"):
            check_ports_free({"ports.router_http": port})


def test_stop_signal_reaches_a_child_that_handles_it(tmp_path: Path) -> None:
    log = tmp_path / "polite.log"
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: (print('drained', flush=True), sys.exit(0)))\n"
        "print('up', flush=True)\n"
        "time.sleep(300)\n"
    )
    child = Child("polite", [sys.executable, "-c", code], log, stop_signal=signal.SIGINT)
    child.start(tmp_path)
    wait_for(lambda: "up" in log.read_text(), 20, "the child to start")
    child.stop(grace_s=10)
    assert child.proc is not None
    assert child.proc.returncode == 0
    assert "drained" in log.read_text()
