"""Checkpoints, bundles and inputs shared by the benchmarks, built once into a cache folder."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

PRECISIONS = ("fp32", "int8", "int4")


def image_bytes(size: int, seed: int = 0) -> bytes:
    """A deterministic, textured PNG (a flat image would compress and preprocess atypically)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 / size, yy * 255 / size, (xx + yy) % 256], -1) + rng.normal(
        0, 30, (size, size, 3)
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def ensure_artifacts(
    cache: Path, preset: str, precisions: Sequence[str] = PRECISIONS
) -> dict[str, Path]:
    """Build (or reuse) the preset's checkpoint and the asked-for bundles under ``cache``."""
    from edge_agent.export.bundle import export_bundle
    from fleetvl_tools.checkpoint import build_checkpoint
    from fleetvl_tools.presets import get_preset

    base = cache / preset
    hf = base / "hf"
    if not (hf / "config.json").exists() or not (hf / "chat_template.jinja").exists():
        print(f"building the {preset} checkpoint in {hf}", flush=True)
        dtype = "bfloat16" if preset == "edge-bench" else "float32"
        build_checkpoint(
            get_preset(preset), hf, dtype=dtype, progress=lambda m: print("  " + m, flush=True)
        )
    out = {"hf": hf}
    for p in precisions:
        b = base / p
        if not (b / "manifest.json").exists():
            print(f"exporting the {p} bundle to {b}", flush=True)
            export_bundle(hf, b, p, progress=lambda m: print("  " + m, flush=True))
        out[p] = b
    return out


def finite(x: object) -> object:
    """``x`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    import math

    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
