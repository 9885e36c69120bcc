"""The cloud engine's own kernels compute what transformers' modules compute.

The engine replaces two of transformers' generic paths with faster ones (batched window
attention in the vision tower, a fused decode layer with grouped-query attention); each is
checked here against transformers' own path on the same weights, for inputs where the two
could diverge: images whose grids split into uneven windows, slots of different lengths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cloud_worker.engine.attention import VISION_ATTENTION
from cloud_worker.engine.decode_step import DecodeStep
from cloud_worker.engine.model import load_model
from cloud_worker.engine.slot_cache import SlotCache
from fleetvl.vlm.image import prepare_image
from fleetvl.vlm.processor import QwenVLProcessor
from tests.conftest import _checkpoint
from tests.helpers import png_bytes, random_image


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def checkpoint(request: pytest.FixtureRequest, artifacts: Path) -> Path:
    return _checkpoint(artifacts, request.param)


def _vision_features(lm, images) -> torch.Tensor:  # noqa: ANN001
    pv = torch.from_numpy(np.concatenate([i.pixel_values for i in images])).to(lm.dtype)
    grid = torch.tensor([i.grid_thw for i in images])
    with torch.inference_mode():
        return torch.cat(list(lm.model.model.get_image_features(pv, grid).pooler_output))


def test_batched_window_attention_equals_per_window(checkpoint: Path) -> None:
    lm = load_model(checkpoint, "cpu", vision_attention="varlen")
    vision_cfg = lm.model.config.vision_config
    assert vision_cfg._attn_implementation == VISION_ATTENTION
    cfg = QwenVLProcessor(checkpoint).image_config
    # Sizes whose merged grids are not multiples of the window: edge windows are smaller,
    # so several segment lengths are grouped in one layer.
    sizes = [(84, 140), (252, 196), (112, 112), (168, 308)]
    images = [prepare_image(png_bytes(random_image(h, w, seed=i)), cfg)
              for i, (h, w) in enumerate(sizes)]  # fmt: skip
    batched = _vision_features(lm, images)
    vision_cfg._attn_implementation = "sdpa"  # transformers' own per-window loop
    reference = _vision_features(lm, images)
    assert batched.shape == reference.shape
    err = (batched - reference).norm() / reference.norm()
    assert err < 1e-5, f"relative error {err:.2e}"


def test_fused_decode_step_equals_transformers_layers(checkpoint: Path) -> None:
    lm = load_model(checkpoint, "cpu")
    slots, capacity = 3, 64
    cache = SlotCache(lm.num_layers, slots, lm.kv_heads, lm.head_dim, capacity, lm.dtype,
                      lm.device)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for k, v in zip(cache.keys, cache.values, strict=True):
        k.copy_(torch.randn(k.shape, generator=gen))
        v.copy_(torch.randn(v.shape, generator=gen))
    reference = DecodeStep(lm, cache, cuda_graphs=False, compile_step=False, impl="transformers")
    fused = DecodeStep(lm, cache, cuda_graphs=False, compile_step=False, impl="fused")
    for step in (reference, fused):
        # Slots at different lengths and MRoPE offsets (an image shifts text positions).
        step.tokens.copy_(torch.tensor([5, 77, 900]))
        step.positions.copy_(torch.tensor([3, 20, 41]))
    cache.write_pos.copy_(torch.tensor([3, 30, 47]))
    want = reference(64).clone()
    got = fused(64).clone()
    err = (got - want).norm() / want.norm()
    assert err < 1e-5, f"relative error {err:.2e}"
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    with pytest.raises(ValueError, match="decode impl"):
        DecodeStep(lm, cache, impl="flash")
