"""Complete the builder's ``genai_config.json`` and write onnxruntime-genai's image processor.

The builder writes the decoder and search sections only. onnxruntime-genai 0.18 rejects
unknown keys, so only keys its parser accepts are written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

__all__ = ["write_genai_config"]


def _processor_config(
    min_pixels: int, max_pixels: int, mean: list[float], std: list[float]
) -> dict[str, object]:
    # ort-extensions' Qwen2.5-VL pipeline; with smart_resize the width/height are ignored.
    return {
        "processor": {
            "name": "qwen2_5_image_processor",
            "transforms": [
                {
                    "operation": {
                        "name": "decode_image",
                        "type": "DecodeImage",
                        "attrs": {"color_space": "RGB"},
                    }
                },
                {"operation": {"name": "convert_to_rgb", "type": "ConvertRGB"}},
                {
                    "operation": {
                        "name": "resize",
                        "type": "Resize",
                        "attrs": {
                            "width": 448,
                            "height": 448,
                            "smart_resize": 1,
                            "min_pixels": min_pixels,
                            "max_pixels": max_pixels,
                            "patch_size": 14,
                            "merge_size": 2,
                        },
                    }
                },
                {
                    "operation": {
                        "name": "rescale",
                        "type": "Rescale",
                        "attrs": {"rescale_factor": 1 / 255},
                    }
                },
                {
                    "operation": {
                        "name": "normalize",
                        "type": "Normalize",
                        "attrs": {"mean": mean, "std": std, "qwen2_5_vl": 1},
                    }
                },
                {
                    "operation": {
                        "name": "patch_image",
                        "type": "PatchImage",
                        "attrs": {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2},
                    }
                },
            ],
        }
    }


def write_genai_config(bundle: Path, hf_config: PreTrainedConfig, max_length: int = 4096) -> None:
    """Add vision/embedding sections and token ids; cap the KV length onnxruntime-genai allocates.

    ``max_length`` matters: with a shared past/present buffer onnxruntime-genai allocates the
    KV cache at ``search.max_length``, which the builder sets to the full context (32k+).
    """
    path = bundle / "genai_config.json"
    cfg = json.loads(path.read_text())
    model = cfg["model"]
    vc = hf_config.vision_config
    session = {"log_id": "onnxruntime-genai", "provider_options": []}
    model["type"] = "qwen2_5_vl"
    model["image_token_id"] = hf_config.image_token_id
    model["video_token_id"] = hf_config.video_token_id
    model["vision_start_token_id"] = hf_config.vision_start_token_id
    model["embedding"] = {
        "filename": "embedding.onnx",
        "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
        "outputs": {"inputs_embeds": "inputs_embeds"},
        "session_options": session,
    }
    model["vision"] = {
        "filename": "vision.onnx",
        "config_filename": "processor_config.json",
        "spatial_merge_size": vc.spatial_merge_size,
        "patch_size": vc.patch_size,
        "tokens_per_second": float(getattr(vc, "tokens_per_second", 2)),
        "inputs": {"pixel_values": "pixel_values", "image_grid_thw": "image_grid_thw"},
        "outputs": {"image_features": "image_features"},
        "session_options": session,
    }
    cfg["search"]["max_length"] = min(int(cfg["search"].get("max_length", max_length)), max_length)
    path.write_text(json.dumps(cfg, indent=4))
    pre = json.loads((bundle / "preprocessor_config.json").read_text())
    size = pre.get("size") or {}
    proc = _processor_config(
        int(pre.get("min_pixels", size.get("shortest_edge", 56 * 56))),
        int(pre.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))),
        list(pre.get("image_mean", [0.48145466, 0.4578275, 0.40821073])),
        list(pre.get("image_std", [0.26862954, 0.26130258, 0.27577711])),
    )
    (bundle / "processor_config.json").write_text(json.dumps(proc, indent=2))
