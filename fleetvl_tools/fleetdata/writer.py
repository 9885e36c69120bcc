"""Write a split to disk: PNG images and one JSON line per question."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from fleetvl_tools.fleetdata.generator import DEFAULT_SIZE, generate

__all__ = ["write_split"]


def write_split(
    out_dir: str | Path,
    split: str,
    n: int,
    *,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    tasks: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    faults: float = 0.0,
) -> Path:
    """Write ``n`` samples of ``split`` under ``out_dir``; returns the JSONL path.

    Layout: ``<out_dir>/<split>.jsonl`` and ``<out_dir>/<split>/<id>.png``. Each line holds
    ``images`` (paths relative to the JSONL file, so the folder can move and its digest does not
    depend on where it lies), ``question``, ``answer``, the task, its ``scene`` (what
    ``fleetvl calibrate`` fits the out-of-scope score's classes on), site and difficulty, and
    the camera fault of the ``faults`` share drawn with a mild (answerable) one.
    """
    out = Path(out_dir).resolve()
    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{split}.jsonl"
    tmp = jsonl.with_suffix(".jsonl.tmp")
    step = max(1, n // 10)
    with tmp.open("w") as f:
        samples = generate(split, n, seed=seed, size=size, tasks=tasks, faults=faults)
        for k, sample in enumerate(samples):
            path = img_dir / f"{sample.id}.png"
            sample.image.save(path, format="PNG")
            f.write(json.dumps(sample.record(f"{split}/{path.name}")) + "\n")
            if progress and ((k + 1) % step == 0 or k + 1 == n):
                progress(f"{split}: {k + 1}/{n} samples")
    tmp.replace(jsonl)
    return jsonl
