"""The demo models: the cloud worker's checkpoint and the agents' INT4 edge bundle, built once
and reused while their inputs hold.

With the trained models (``edge_model`` / ``cloud_model``) the cloud worker serves the cloud
checkpoint as it is and the bundle is exported from the edge checkpoint into
``cache_dir/<edge dir name>-<key>/int4``, the key hashing the checkpoint's files and the
exporter's code. The random-weight fallback builds the ``preset`` checkpoint too, into
``cache_dir/<preset>-<key>/{hf,int4}``, the key hashing the preset and the code producing both.
Either is built by the ordinary ``fleetvl model init`` / ``fleetvl model export`` commands as
child processes (the launcher imports no tier); a change to the exporter rebuilds them.

The trained bundle is then calibrated as a site's would be: ``fleetvl data write --split
calib`` (fleet questions no training run or benchmark uses, a fifth through a mildly faulty
camera) and ``fleetvl calibrate``, which stores the gate's thresholds and the out-of-scope
score in the bundle. That step is keyed by the code it runs too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetvl.errors import FleetVLError
from fleetvl_tools.launch.config import UpConfig

__all__ = ["DemoArtifacts", "artifact_key", "calibration_key", "fallback_note", "prepare",
           "prepare_for", "prepare_trained", "trained_key"]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
_EXPORTER = sorted((ROOT / "edge_agent" / "export").glob("*.py"))
# What a calibration depends on (with the bundle): the calib split, the score, the thumbnail
# and camera features, the calibration and its command.
CALIBRATION_CODE = [
    *sorted((ROOT / "fleetvl_tools" / "fleetdata").glob("*.py")),
    ROOT / "fleetvl" / "vlm" / "scope.py",
    ROOT / "fleetvl" / "vlm" / "camera.py",
    ROOT / "fleetvl" / "vlm" / "image.py",
    ROOT / "fleetvl" / "vlm" / "calibration.py",
    ROOT / "edge_agent" / "calibrate.py",
]
CALIBRATION_EXAMPLES = 1500
_PRODUCERS = [
    ROOT / "fleetvl_tools" / "presets.py",
    ROOT / "fleetvl_tools" / "checkpoint.py",
    ROOT / "fleetvl" / "vlm" / "templates" / "qwen2_vl_chat.jinja",
    *_EXPORTER,
]


@dataclass(frozen=True)
class DemoArtifacts:
    hf_dir: Path  # served by the cloud worker
    bundle_dir: Path  # INT4 edge bundle served by every site agent
    built: bool  # False: everything came from the cache
    build_s: float
    trained: bool = False  # the trained fleet models (False: random-weight preset)


def _hash_files(seed: bytes, files: list[Path]) -> str:
    h = hashlib.sha256(seed)
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def artifact_key(preset: str) -> str:
    return _hash_files(preset.encode(), _PRODUCERS)


def trained_key(edge_model: Path) -> str:
    """The checkpoint's files (weights, config, tokenizer, template) and the exporter."""
    files = sorted(f for f in edge_model.iterdir() if f.is_file())
    return _hash_files(b"trained", [*files, *_EXPORTER])


def _run(args: list[str], what: str, progress: Callable[[str], None]) -> None:
    progress(f"  {what} ...")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetvl_tools.cli", *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    tail: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-30:]
            progress(f"    {line.rstrip()}")
    except BaseException:  # Ctrl-C / SIGTERM while building: the build goes too
        proc.kill()
        proc.wait()
        raise
    if proc.wait() != 0:
        raise FleetVLError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _build_once(path: Path, args: Callable[[Path], list[str]], what: str,
                progress: Callable[[str], None]) -> bool:  # fmt: skip
    """Build into a temporary sibling and rename it, so a build cut short is never reused."""
    if (path / ".complete").exists():
        return False
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # concurrent builds never share one
    shutil.rmtree(tmp, ignore_errors=True)
    _run(args(tmp), what, progress)
    (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    if (path / ".complete").exists():  # another run finished first: keep what it may be using
        shutil.rmtree(tmp, ignore_errors=True)
        return True
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return True


def _export(hf: Path, bundle: Path, progress: Callable[[str], None]) -> bool:
    return _build_once(
        bundle, lambda p: ["model", "export", str(hf), str(p), "--precision", "int4"],
        "exporting the INT4 edge bundle", progress,
    )  # fmt: skip


def calibration_key(bundle: Path) -> str:
    """What a calibration of ``bundle`` depends on: its manifest and the code that writes the
    calibration split, computes the gate signals and fits the out-of-scope score."""
    return _hash_files(b"calibration", [bundle / "manifest.json", *CALIBRATION_CODE])


def _calibrate(bundle: Path, root: Path, progress: Callable[[str], None]) -> bool:
    """Calibrate ``bundle`` on a calibration split (written once into ``root``); keyed by
    :func:`calibration_key`, in the bundle's ``.calibrated`` marker."""
    key = calibration_key(bundle)
    marker = bundle / ".calibrated"
    if marker.exists() and marker.read_text() == key:
        return False
    data = root / f"calib-data-{key}"
    _build_once(
        data, lambda p: ["data", "write", str(p), "--split", "calib", "--faults", "0.2",
                         "--n", str(CALIBRATION_EXAMPLES)],
        f"writing {CALIBRATION_EXAMPLES} calibration questions", progress,
    )  # fmt: skip
    _run(["calibrate", str(bundle), str(data / "calib.jsonl"), "--max-tokens", "8"],
         "calibrating the gate and the out-of-scope score", progress)  # fmt: skip
    marker.write_text(key)
    return True


def prepare_trained(cache_dir: Path, edge_model: Path, cloud_model: Path,
                    progress: Callable[[str], None]) -> DemoArtifacts:  # fmt: skip
    t0 = time.monotonic()
    root = cache_dir / f"{edge_model.name}-{trained_key(edge_model)}"
    root.mkdir(parents=True, exist_ok=True)
    built = _export(edge_model, root / "int4", progress)
    built |= _calibrate(root / "int4", root, progress)
    return DemoArtifacts(cloud_model, root / "int4", built, time.monotonic() - t0, trained=True)


def prepare(cache_dir: Path, preset: str, progress: Callable[[str], None]) -> DemoArtifacts:
    t0 = time.monotonic()
    root = cache_dir / f"{preset}-{artifact_key(preset)}"
    root.mkdir(parents=True, exist_ok=True)
    hf, bundle = root / "hf", root / "int4"
    built = _build_once(hf, lambda p: ["model", "init", str(p), "--preset", preset],
                        f"building the {preset} checkpoint", progress)  # fmt: skip
    built |= _export(hf, bundle, progress)
    return DemoArtifacts(hf, bundle, built, time.monotonic() - t0)


def fallback_note(cfg: UpConfig) -> str | None:
    """The one line ``fleetvl up`` prints when the trained models are missing (None: found)."""
    if cfg.trained_models() is not None:
        return None
    missing = [f"{k} {p} has no config.json" if p is not None else f"{k} not configured"
               for k, p in (("edge_model", cfg.edge_model), ("cloud_model", cfg.cloud_model))
               if p is None or not (p / "config.json").is_file()]  # fmt: skip
    return (f"note: no trained models ({'; '.join(missing)}): falling back to the random-weight "
            f"'{cfg.preset}' checkpoint; its answers are gibberish and the demo reports no "
            "accuracy")  # fmt: skip


def prepare_for(cfg: UpConfig, progress: Callable[[str], None]) -> DemoArtifacts:
    """The trained models when both are there, else the ``preset`` fallback (said so)."""
    trained = cfg.trained_models()
    if trained is not None:
        return prepare_trained(cfg.cache_dir, *trained, progress)
    note = fallback_note(cfg)
    assert note is not None
    progress(note)
    return prepare(cfg.cache_dir, cfg.preset, progress)
