"""Test helpers: synthetic camera frames and encoded images."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """A camera frame stand-in: smooth gradients plus noise, so resizing has work to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / max(w, 1)), (yy * 255 / max(h, 1)), ((xx + yy) % 256)], -1)
    noise = rng.normal(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def hf_inputs(prompt: Any, image_token_id: int) -> dict[str, Any]:
    """transformers' Qwen-VL forward/generate() keyword arguments for one of our prompts."""
    import torch

    ids = torch.from_numpy(prompt.input_ids)[None]
    kw = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == image_token_id).int(),
    }
    if prompt.images:
        kw["pixel_values"] = torch.from_numpy(
            np.concatenate([i.pixel_values for i in prompt.images])
        )
        kw["image_grid_thw"] = torch.tensor([i.grid_thw for i in prompt.images])
    return kw
