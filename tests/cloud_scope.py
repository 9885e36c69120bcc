"""A tiny cloud checkpoint with an out-of-scope score fitted by the cloud engine itself, and
the images that test it: rendered fleet scenes (in scope) and pure noise (out of scope)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# Four scene classes of twelve calibration images each (the fit needs eight of every scene).
TASKS = ("gauge", "breaker", "thermal", "empty_row")
CALIBRATION_IMAGES = 48


def scoped_checkpoint(src: Path, dest: Path) -> Path:
    """Copy the checkpoint ``src`` to ``dest`` and give it a scope model fitted on
    ``CALIBRATION_IMAGES`` images of the ``calib`` split, as ``fleetvl calibrate --cloud``
    would (``calibration.json`` + ``scope.npz``)."""
    from cloud_worker.engine import CloudEngine, EngineConfig, ScopeExample, fit_scope, write_scope
    from fleetvl_tools.fleetdata import generate
    from fleetvl_tools.fleetdata.faults import SCENE_KIND

    shutil.copytree(src, dest)
    samples = list(generate("calib", CALIBRATION_IMAGES, tasks=TASKS))
    engine = CloudEngine(dest, EngineConfig(max_slots=4, max_context=512))
    try:
        model = fit_scope(engine, [ScopeExample([s.image], s.question, SCENE_KIND[s.task])
                                   for s in samples])
    finally:
        engine.close()
    labelled = hashlib.sha256("\n".join(s.id for s in samples).encode()).hexdigest()
    write_scope(dest, model, labelled, len(samples))
    return dest


def in_scope(n: int) -> list:
    """``n`` fresh scenes of the calibrated kinds (samples the fit never saw)."""
    from fleetvl_tools.fleetdata import generate

    return list(generate("calib", n, tasks=TASKS, start=10_000))


def noise_image(seed: int = 0, size: int = 168) -> Image.Image:
    """A frame of pure noise: what a broken sensor sends."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
