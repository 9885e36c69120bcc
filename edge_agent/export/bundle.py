"""HF checkpoint -> edge bundle (vision, embedding, decoder + manifest).

Layout (onnxruntime-genai's ``qwen2_5_vl`` 3-model split, plus our manifest)::

    OUT/
      vision.onnx            grid-agnostic vision tower (fleetvl.vlm.vision_plan inputs)
      embedding.onnx         token embedding + image feature merge
      model.onnx(.data)      decoder from onnxruntime-genai's builder (all-position logits)
      model.last.onnx        same weights, LM head on the last position (our engine)
      genai_config.json      onnxruntime-genai's config
      config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja,
      preprocessor_config.json
      manifest.json          precision, files with sha256, and the bundle digest

The bundle digest hashes every file that changes an answer (weights, graphs, tokenizer,
template, preprocessing) and is the cache namespace of later issues.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.export.decoder import DECODER_LAST, build_decoder
from edge_agent.export.embedding import export_embedding
from edge_agent.export.genai_config import write_genai_config
from edge_agent.export.vision import export_vision
from fleetvl.vlm.bundle_manifest import (
    FORMAT_VERSION,
    MANIFEST,
    FileEntry,
    Manifest,
    file_sha256,
)

__all__ = ["PRECISIONS", "export_bundle"]

PRECISIONS = ("fp32", "int8", "int4")
_COPIED = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
)


def export_bundle(
    hf_dir: str | Path,
    out_dir: str | Path,
    precision: str = "int4",
    *,
    accuracy_level: int = 4,
    block_size: int = 128,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Export a Qwen2.5-VL / Qwen2-VL directory to an edge bundle; returns the bundle path.

    ``min_pixels``/``max_pixels`` set the bundle's image budget (default: the checkpoint's).
    The vision graph takes any grid, so this is the only resolution setting a bundle needs: a
    site box caps it to bound vision cost and image tokens (e.g. 256 * 28 * 28 pixels = 256
    tokens).

    Raises:
        ValueError: unknown precision or an unsupported architecture.
        FileNotFoundError: the checkpoint lacks a file the bundle needs.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    hf = Path(hf_dir)
    out = Path(out_dir)
    for name in _COPIED:
        if not (hf / name).exists():
            raise FileNotFoundError(f"{hf} has no {name}: not a complete Qwen-VL directory")
    cfg = AutoConfig.from_pretrained(hf)
    arch = (cfg.architectures or [""])[0]
    if arch not in ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration"):
        raise ValueError(f"{hf}: architecture {arch!r} is not Qwen2.5-VL or Qwen2-VL")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = 5

    def step(i: int, msg: str) -> None:
        progress(f"[{i}/{steps}] {msg} ({time.perf_counter() - t0:.0f}s)")

    step(1, f"loading {arch} from {hf}")
    model = AutoModelForImageTextToText.from_pretrained(hf, dtype=torch.float32).eval()
    step(2, "exporting vision encoder")
    export_vision(model, out / "vision.onnx")
    step(3, "exporting embedding")
    export_embedding(
        model,
        out / "embedding.onnx",
        image_token_id=cfg.image_token_id,
        weight_dtype="float32" if precision == "fp32" else "float16",
    )
    del model
    step(4, f"building {precision} decoder with onnxruntime-genai's builder")
    build_decoder(
        hf, out, precision, accuracy_level=accuracy_level, block_size=block_size, progress=progress
    )
    step(5, "writing configs and manifest")
    for name in _COPIED:
        shutil.copy(hf / name, out / name)
    _set_pixel_budget(out / "preprocessor_config.json", min_pixels, max_pixels)
    write_genai_config(out, cfg)
    manifest = _manifest(out, precision, arch, accuracy_level, block_size)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    progress(
        f"bundle {manifest['bundle_digest'][:16]} ready in {out} "
        f"({manifest['total_bytes'] / 1e6:.1f} MB, {time.perf_counter() - t0:.0f}s)"
    )
    return out


def _set_pixel_budget(path: Path, min_pixels: int | None, max_pixels: int | None) -> None:
    if min_pixels is None and max_pixels is None:
        return
    pre = json.loads(path.read_text())
    size = pre.setdefault("size", {})
    if min_pixels is not None:
        pre["min_pixels"] = size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        pre["max_pixels"] = size["longest_edge"] = max_pixels
    if pre.get("min_pixels", 0) > pre.get("max_pixels", 1 << 62):
        raise ValueError(f"min_pixels {min_pixels} is above max_pixels {max_pixels}")
    path.write_text(json.dumps(pre, indent=2))


def _manifest(
    out: Path, precision: str, arch: str, accuracy_level: int, block_size: int
) -> Manifest:
    files: dict[str, FileEntry] = {}
    for f in sorted(out.iterdir()):
        if f.is_file() and f.name != MANIFEST:
            files[f.name] = {"sha256": file_sha256(f), "bytes": f.stat().st_size}
    digest = hashlib.sha256()
    digest.update(f"fleetvl-bundle/{FORMAT_VERSION}".encode())
    for name, meta in files.items():
        digest.update(f"{name}:{meta['sha256']}\n".encode())
    return {
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "precision": precision,
        "quantization": (
            {"block_size": block_size, "accuracy_level": accuracy_level, "fused_gate_up": True}
            if precision != "fp32"
            else None
        ),
        "decoder": {"genai": "model.onnx", "engine": DECODER_LAST},
        "files": files,
        "total_bytes": sum(m["bytes"] for m in files.values()),
        "bundle_digest": digest.hexdigest(),
    }
