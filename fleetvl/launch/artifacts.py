"""The demo checkpoint and INT4 edge bundle: built once, reused while their inputs hold.

They are built by the ordinary ``fleetvl model init`` / ``fleetvl model export`` commands as
child processes (the launcher imports no tier), into ``cache_dir/<key>`` where the key hashes
the preset and the code that produces them; a change to the exporter rebuilds them.
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

__all__ = ["DemoArtifacts", "artifact_key", "prepare"]

ROOT = Path(__file__).resolve().parents[2]
_PRODUCERS = [
    ROOT / "fleetvl" / "vlm" / "presets.py",
    ROOT / "fleetvl" / "vlm" / "checkpoint.py",
    ROOT / "fleetvl" / "vlm" / "templates" / "qwen2_vl_chat.jinja",
    *sorted((ROOT / "edge_agent" / "export").glob("*.py")),
]


@dataclass(frozen=True)
class DemoArtifacts:
    hf_dir: Path  # served by the cloud worker
    bundle_dir: Path  # INT4 edge bundle served by every site agent
    built: bool  # False: both came from the cache
    build_s: float


def artifact_key(preset: str) -> str:
    h = hashlib.sha256(preset.encode())
    for f in _PRODUCERS:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _run(args: list[str], what: str, progress: Callable[[str], None]) -> None:
    progress(f"  {what} ...")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetvl.cli", *args], cwd=ROOT,
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


def prepare(cache_dir: Path, preset: str, progress: Callable[[str], None]) -> DemoArtifacts:
    t0 = time.monotonic()
    root = cache_dir / f"{preset}-{artifact_key(preset)}"
    root.mkdir(parents=True, exist_ok=True)
    hf, bundle = root / "hf", root / "int4"
    built = _build_once(hf, lambda p: ["model", "init", str(p), "--preset", preset],
                        f"building the {preset} checkpoint", progress)  # fmt: skip
    built |= _build_once(
        bundle, lambda p: ["model", "export", str(hf), str(p), "--precision", "int4"],
        "exporting the INT4 edge bundle", progress,
    )  # fmt: skip
    return DemoArtifacts(hf, bundle, built, time.monotonic() - t0)
