"""Multimodal RoPE (MRoPE) position ids for Qwen2-VL and Qwen2.5-VL, in NumPy.

Text tokens advance all three axes (temporal, height, width) together; the tokens of an image
take a grid: temporal = start, height = start + row, width = start + column, after the 2x2
merge. The next text token starts at ``start + max(rows, cols)``. Because an image takes fewer
positions than tokens, positions run behind cache indices; we carry ``next_position`` (one past
the largest position used) instead of transformers' ``rope_deltas``, which composes with cached
prefixes: a continuation simply starts at the prefix's ``next_position``. Parity with
transformers' ``get_rope_index`` is tested.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["decode_position_ids", "rope_index"]


def rope_index(
    input_ids: Sequence[int] | np.ndarray,
    image_token_id: int,
    image_grids: Sequence[tuple[int, int, int]],
    spatial_merge_size: int = 2,
    start: int = 0,
) -> tuple[np.ndarray, int]:
    """3-axis position ids for one sequence.

    Args:
        input_ids: token ids of the sequence (already expanded: one image-pad token per merged
            patch).
        image_token_id: id of the image placeholder token.
        image_grids: ``(t, h, w)`` patch grid of each image, in order of appearance.
        spatial_merge_size: side of the patch merger (2 for every Qwen-VL release).
        start: position of the first token (a cached prefix's ``next_position``).

    Returns:
        ``(positions [3, S] int64, next_position)``.

    Raises:
        ValueError: the number of placeholder tokens does not match the grids.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    n = ids.shape[0]
    pos = np.empty((3, n), dtype=np.int64)
    is_img = ids == image_token_id
    grids = iter(image_grids)
    i = 0
    cur = start
    while i < n:
        if not is_img[i]:
            j = i
            while j < n and not is_img[j]:
                j += 1
            pos[:, i:j] = np.arange(cur, cur + (j - i))[None, :]
            cur += j - i
            i = j
            continue
        try:
            t, h, w = next(grids)
        except StopIteration:
            raise ValueError("more image placeholder runs than images") from None
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        count = t * gh * gw
        if i + count > n or not is_img[i : i + count].all():
            raise ValueError(f"image placeholder run at {i} is shorter than its grid ({count})")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        pos[0, i : i + count] = tt.reshape(-1) + cur
        pos[1, i : i + count] = hh.reshape(-1) + cur
        pos[2, i : i + count] = ww.reshape(-1) + cur
        cur += max(gh, gw)
        i += count
    if next(grids, None) is not None:
        raise ValueError("fewer image placeholder runs than images")
    return pos, (int(pos.max()) + 1 if n else start)


def decode_position_ids(next_position: int, num_new: int) -> np.ndarray:
    """Positions ``[3, num_new]`` of text tokens appended at ``next_position``."""
    p = np.arange(next_position, next_position + num_new, dtype=np.int64)
    return np.broadcast_to(p[None, :], (3, num_new)).copy()
