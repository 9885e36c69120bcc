"""Complete the builder's ``genai_config.json`` with the vision and embedding models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_genai_config"]


def write_genai_config(bundle: Path, hf_config: Any) -> None:
    path = bundle / "genai_config.json"
    cfg = json.loads(path.read_text())
    model = cfg["model"]
    vc = hf_config.vision_config
    model["type"] = "qwen2_5_vl"
    model["image_token_id"] = hf_config.image_token_id
    model["vision_start_token_id"] = hf_config.vision_start_token_id
    model["embedding"] = {
        "filename": "embedding.onnx",
        "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
        "outputs": {"embeddings": "inputs_embeds"},
    }
    model["vision"] = {
        "filename": "vision.onnx",
        "inputs": {"pixel_values": "pixel_values"},
        "outputs": {"image_features": "image_features"},
        "spatial_merge_size": vc.spatial_merge_size,
        "patch_size": vc.patch_size,
        "window_size": getattr(vc, "window_size", 0),
    }
    path.write_text(json.dumps(cfg, indent=4))
