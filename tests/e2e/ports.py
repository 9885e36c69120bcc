"""Helpers for `fleetvl up` runs: a free block of ports, waiting until it is ready."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from tests.redis_servers import PORT_RANGE


def free_base() -> int:
    """A base port whose first 20 ports (the fleet's listeners) are all free."""
    rng = random.Random()
    for _ in range(50):
        # Blocks of 500 (ours, Ray's workers), below the ephemeral range (see free_port).
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - 500, 500)
        try:
            for off in range(20):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", base + off))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the fleet")


def wait_ready(proc: subprocess.Popen[bytes], endpoints: Path, log: Path, timeout: float) -> None:
    """Poll until `fleetvl up` has written ``endpoints``; fail at once if it exits first."""
    end = time.monotonic() + timeout
    delay = 0.05
    while not endpoints.exists():
        if proc.poll() is not None:
            raise AssertionError(f"fleetvl up exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > end:
            raise AssertionError(
                f"fleetvl up not ready after {timeout} s:\n{log.read_text()[-4000:]}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def start_up(tmp: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`fleetvl up` on examples/up.yaml as a new user runs it (the shipped trained models, the
    shared artifact cache, its own free ports and run dir under ``tmp``, an embedded Redis),
    in its own session: (the process, its config, its log). Wait with :func:`wait_ready` on
    ``tmp / "run" / "endpoints.json"``."""
    import os
    import sys

    import yaml

    root = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((root / "examples" / "up.yaml").read_text())
    cfg |= {
        "base_port": free_base(),
        "fleet_spec": str(root / "examples" / "fleet.yaml"),
        "cache_dir": str(root / ".cache" / "up"),  # built once, shared with `fleetvl up`
        "run_dir": str(tmp / "run"),
        # The shipped trained models (the config's own relative paths point next to it).
        "edge_model": str(root / "models" / "fleet-edge"),
        "cloud_model": str(root / "models" / "fleet-cloud"),
    }
    config = tmp / "up.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp / "up.log"
    env = {k: v for k, v in os.environ.items() if k != "FLEETVL_REDIS_URL"}  # embedded Redis
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetvl_tools.cli", "up", "--config", str(config)],
            cwd=root, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, config, log
