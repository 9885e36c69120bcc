"""Shared fixtures: tiny checkpoints and edge bundles built once and cached on disk.

Artifacts live under ``$FLEETVL_TEST_CACHE`` (default ``.cache/test-artifacts``) in a folder
keyed by a hash of the code that produces them, so a change to the exporter rebuilds them and
an unchanged tree reuses them across runs. Tests are auto-marked by folder.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetvl_tools.launch.artifacts import CALIBRATION_CODE

ROOT = Path(__file__).resolve().parents[1]
_PRODUCERS = [
    ROOT / "fleetvl_tools" / "presets.py",
    ROOT / "fleetvl_tools" / "checkpoint.py",
    ROOT / "fleetvl" / "vlm" / "templates" / "qwen2_vl_chat.jinja",
    *sorted((ROOT / "edge_agent" / "export").glob("*.py")),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        if len(parts) > 1 and parts[1] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[1]))


def _artifact_root() -> Path:
    h = hashlib.sha256()
    for f in _PRODUCERS:
        h.update(f.read_bytes())
    base = Path(os.environ.get("FLEETVL_TEST_CACHE", ROOT / ".cache" / "test-artifacts"))
    return base / h.hexdigest()[:16]


def _build_once(path: Path, build: Callable[[Path], object]) -> Path:
    """Build into a temp sibling and rename, so an interrupted build is never reused."""
    if (path / ".complete").exists():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    build(tmp)
    (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path


@pytest.fixture(scope="session")
def artifacts() -> Path:
    root = _artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _checkpoint(artifacts: Path, family: str) -> Path:
    from fleetvl_tools.checkpoint import build_checkpoint
    from fleetvl_tools.presets import get_preset

    return _build_once(
        artifacts / f"tiny-{family}",
        lambda p: build_checkpoint(get_preset("tiny", family), p, progress=lambda _m: None),
    )


def _bundle(artifacts: Path, family: str, precision: str) -> Path:
    from edge_agent.export.bundle import export_bundle

    hf = _checkpoint(artifacts, family)
    return _build_once(
        artifacts / f"tiny-{family}-{precision}",
        lambda p: export_bundle(hf, p, precision, progress=lambda _m: None),
    )


@pytest.fixture(scope="session", params=["qwen2_5_vl", "qwen2_vl"])
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoint(artifacts: Path) -> Path:
    return _checkpoint(artifacts, "qwen2_5_vl")


@pytest.fixture(scope="session")
def fp32_bundle(artifacts: Path) -> Path:
    return _bundle(artifacts, "qwen2_5_vl", "fp32")


@pytest.fixture(scope="session")
def bundle_factory(artifacts: Path) -> Callable[[str, str], Path]:
    return lambda family, precision: _bundle(artifacts, family, precision)


@pytest.fixture(scope="session")
def checkpoint_factory(artifacts: Path) -> Callable[[str], Path]:
    return lambda family: _checkpoint(artifacts, family)


# The shipped fleet-edge model as a site runs it: the INT4 bundle, calibrated on questions of
# the calib split (thresholds and the out-of-scope score). Keyed by the checkpoint too.
_CALIBRATION_CODE = [*CALIBRATION_CODE, ROOT / "models" / "fleet-edge" / "model.safetensors"]
FLEET_CALIBRATION_EXAMPLES = 1500


@pytest.fixture(scope="session")
def fleet_bundle(artifacts: Path) -> Path:
    """INT4 bundle of models/fleet-edge with calibration.json and scope.npz."""
    from edge_agent.calibrate import calibrate_bundle
    from edge_agent.export.bundle import export_bundle
    from fleetvl_tools.fleetdata import write_split

    edge = ROOT / "models" / "fleet-edge"
    if not (edge / "config.json").exists():
        pytest.skip("models/fleet-edge is not in this checkout (see models/README.md)")
    h = hashlib.sha256()
    for f in _CALIBRATION_CODE:
        h.update(f.read_bytes())

    final = artifacts / f"fleet-edge-int4-calibrated-{h.hexdigest()[:12]}"
    data = final.with_name(final.name + "-data")  # the calibration set, kept beside it

    def build(p: Path) -> None:
        export_bundle(edge, p, "int4", progress=lambda _m: None)
        write_split(data, "calib", FLEET_CALIBRATION_EXAMPLES, faults=0.2)
        calibrate_bundle(p, data / "calib.jsonl", max_tokens=8)

    return _build_once(final, build)
