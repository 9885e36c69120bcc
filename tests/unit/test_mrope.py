"""MRoPE position ids: parity with transformers' get_rope_index."""

from __future__ import annotations

import numpy as np
import pytest

from fleetvl.vlm.mrope import decode_position_ids, rope_index

IMG = 50


def _prompt(rng: np.random.Generator, grids: list[tuple[int, int, int]]) -> np.ndarray:
    ids: list[int] = list(rng.integers(0, 40, rng.integers(1, 8)))
    for t, h, w in grids:
        ids += [IMG] * (t * h * w // 4) + list(rng.integers(0, 40, rng.integers(1, 6)))
    return np.asarray(ids, dtype=np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_matches_transformers(seed: int) -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    rng = np.random.default_rng(seed)
    grids = [(1, int(2 * rng.integers(1, 9)), int(2 * rng.integers(1, 9))) for _ in range(seed % 3)]
    ids = _prompt(rng, grids)
    cfg = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 32,
            "vocab_size": 64,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "num_heads": 1,
            "out_hidden_size": 32,
            "intermediate_size": 16,
            "fullatt_block_indexes": [0],
        },
        image_token_id=IMG,
    )
    model = Qwen2_5_VLModel(cfg)
    t = torch.from_numpy(ids)[None]
    ours, next_pos = rope_index(ids, IMG, grids)
    if grids:
        ref, delta = model.get_rope_index(
            t, mm_token_type_ids=(t == IMG).int(), image_grid_thw=torch.tensor(grids)
        )
        np.testing.assert_array_equal(ours, ref[:, 0].numpy())
        assert next_pos == len(ids) + int(delta)
    else:
        np.testing.assert_array_equal(ours, np.tile(np.arange(len(ids)), (3, 1)))
        assert next_pos == len(ids)


def test_decode_positions_continue_after_prompt() -> None:
    ids = np.array([1, 2, IMG, IMG, IMG, IMG, 3], dtype=np.int64)
    pos, nxt = rope_index(ids, IMG, [(1, 4, 4)])
    assert nxt == pos.max() + 1
    step = decode_position_ids(nxt, 2)
    assert step.shape == (3, 2)
    assert (step[:, 0] == nxt).all()
    assert (step[:, 1] == nxt + 1).all()


def test_placeholder_count_mismatch_is_an_error() -> None:
    ids = np.array([1, IMG, IMG, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="shorter than its grid"):
        rope_index(ids, IMG, [(1, 4, 4)])
    with pytest.raises(ValueError, match="fewer image placeholder runs"):
        rope_index(np.array([1, 2], dtype=np.int64), IMG, [(1, 2, 2)])
