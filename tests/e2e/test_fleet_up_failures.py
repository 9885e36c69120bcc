"""`fleetvl up` refusing to start: a configured port already taken (named, before anything
starts), and a component failing midway (everything already started is stopped)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.ports import free_base, wait_ready
from tests.edge_harness import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, **over: object) -> tuple[Path, int]:
    cfg = yaml.safe_load((ROOT / "examples" / "up.yaml").read_text())
    base = free_base()
    cfg |= {
        "base_port": base,
        "fleet_spec": str(ROOT / "examples" / "fleet.yaml"),
        "cache_dir": str(ROOT / ".cache" / "up"),
        "run_dir": str(tmp / "run"),
        "edge_model": str(ROOT / "models" / "fleet-edge"),
        "cloud_model": str(ROOT / "models" / "fleet-cloud"),
        **over,
    }
    path = tmp / "up.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, base


def _up(config: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEETVL_REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "fleetvl_tools.cli", "up", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (this run's folders)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd and p.info["pid"] != os.getpid():
            found.append(f"{p.info['pid']}: {cmd[:200]}")
    return found


def test_a_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    config, base = _config(tmp_path)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of an earlier run
        s.bind(("127.0.0.1", base + 2))  # the controller's HTTP port
        s.listen(1)
        t0 = time.monotonic()
        r = _up(config, 60)
    assert r.returncode == 2
    assert f"127.0.0.1:{base + 2} (ports.controller_http)" in r.stderr
    assert "--base-port" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "run" / "logs").exists()  # nothing was started


@pytest.mark.slow
def test_a_component_failing_midway_stops_everything_started(tmp_path: Path) -> None:
    # The agents' gate refuses this value, so every agent exits at start-up, after Redis,
    # Ray, the controller and the router are already running.
    config, base = _config(tmp_path, agent={"threshold_source": "bogus"})
    r = _up(config, 300)
    assert r.returncode == 2, r.stdout[-2000:]
    assert "exited with status 2 during start-up" in r.stderr
    assert "threshold_source" in r.stderr  # the agent's own message, from its log
    for name in ("ray", "router", "controller", "redis"):
        assert f"stopped {name}" in r.stdout
    run_dir = str(tmp_path / "run")
    ray_dir = f"fleetvl-up-ray-{base}"
    try:
        wait_for(lambda: not _leftovers(run_dir) and not _leftovers(ray_dir), 15, "no leftovers")
    except TimeoutError as exc:
        raise AssertionError(_leftovers(run_dir) + _leftovers(ray_dir)) from exc
    assert not (tmp_path / "run" / "endpoints.json").exists()


@pytest.mark.slow
def test_killing_fleetvl_up_takes_its_components_along(tmp_path: Path) -> None:
    """SIGKILL runs none of `fleetvl up`'s clean-up: its children still go (parent-death
    signal), so a crashed launcher leaves no fleet behind."""
    config, base = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "FLEETVL_REDIS_URL"}
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetvl_tools.cli", "up", "--config", str(config)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    endpoints = tmp_path / "run" / "endpoints.json"
    run_dir, ray_dir = str(tmp_path / "run"), f"fleetvl-up-ray-{base}"
    try:
        wait_ready(proc, endpoints, log, 420)
        assert len(_leftovers(run_dir)) >= 8  # the components are running
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not _leftovers(run_dir) and not _leftovers(ray_dir), 60, "no leftovers")
    finally:
        for line in _leftovers(run_dir) + _leftovers(ray_dir):  # never leave a fleet running
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
        # A killed launcher cannot remove Ray's session folder; the test does.
        shutil.rmtree(Path(tempfile.gettempdir()) / ray_dir, ignore_errors=True)


def test_demo_without_a_running_fleet_says_what_to_start(tmp_path: Path) -> None:
    config, _ = _config(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "fleetvl_tools.cli", "demo", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "no running fleet" in r.stderr
    assert "fleetvl up" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_second_fleetvl_up_on_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    import fcntl

    config, _ = _config(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "logs").mkdir()
    (tmp_path / "run" / "logs" / "router.log").write_text("the first run's log\n")
    with open(tmp_path / "run" / ".lock", "w") as held:  # as a running `fleetvl up` holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        r = _up(config, 60)
    assert r.returncode == 2
    assert "another `fleetvl up` is running" in r.stderr
    # The first run's files are untouched.
    assert (tmp_path / "run" / "logs" / "router.log").read_text() == "the first run's log\n"
