"""The edge install path's files (deploy/): the systemd unit checked by systemd itself, the
Dockerfile's sources and extras checked against the repository (no container runtime here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "fleetvl-edge.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)


def _unit_for_this_machine(tmp_path: Path) -> Path:
    # verify checks that ExecStart's binary exists: point it at this checkout's console script.
    fleetvl = Path(sys.executable).with_name("fleetvl")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/fleetvl/venv/bin/fleetvl", str(fleetvl)))
    return unit


@needs_systemd
def test_systemd_unit_verifies_without_warnings(tmp_path: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "verify", str(_unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # Unknown keys or keys in the wrong section are only warnings: refuse them too.
    assert out.stderr.strip() == ""


@needs_systemd
def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(_unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    # systemd's scale: 0 (locked down) .. 10 (unprotected); an unhardened unit scores 9.6.
    assert float(m.group(1)) <= 3.0, out.stdout


def test_systemd_unit_runs_the_agent_with_state_for_its_spool() -> None:
    text = UNIT.read_text()
    keys = dict(
        re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE)  # last value of repeated keys wins
    )
    assert keys["ExecStart"].endswith("fleetvl edge run --config /etc/fleetvl/site.yaml")
    assert keys["User"] == "fleetvl"
    assert keys["Restart"] == "on-failure"
    assert keys["ProtectSystem"] == "strict"
    assert "fleetvl/spool" in keys["StateDirectory"].split()
    assert "/var/lib/fleetvl" in keys["ReadWritePaths"].split()


def test_dockerfile_copies_what_exists_and_names_real_extras() -> None:
    text = DOCKERFILE.read_text()
    for src in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = {e for group in re.findall(r"EXTRAS=([\w,]+)", text) for e in group.split(",")}
    assert named >= {"edge", "serve", "controller", "cloud"}
    assert named <= set(extras)
