"""`fleetvl controller ...` refuses bad configuration with a reason, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.controller_harness import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetvl_tools.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_missing_admin_token_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"http_port": 0}))
    r = _run("controller", "run", "--config", str(tmp_path / "c.yaml"))
    assert r.returncode == 2
    assert "admin_token" in r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_spec_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        yaml.safe_dump({"tenants": {"t": {}}, "sites": [{"id": "a", "tenant": "nope"}]})
    )
    cfg = {"admin_token": "x", "spec_file": "fleet.yaml", "http_port": 0, "grpc_port": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = _run("controller", "run", "--config", str(tmp_path / "c.yaml"))
    assert r.returncode == 2
    assert "names tenant 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run("controller", "check", str(tmp_path / "fleet.yaml"))
    assert r.returncode == 2
    assert "names tenant 'nope'" in r.stderr


def test_taken_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = {
            "admin_token": "x",
            "http_port": 0,
            "grpc_port": port,
            "namespace": "test-cli-port",
            "bundle_dir": str(tmp_path / "b"),
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        r = _run("controller", "run", "--config", str(tmp_path / "c.yaml"))
    assert r.returncode == 2
    assert f"127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
