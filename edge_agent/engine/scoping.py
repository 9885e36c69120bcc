"""What the edge engine hands the out-of-scope score (:mod:`fleetvl.vlm.scope`) for a prompt.

The question's input embeddings come from the prefill's own (re-embedded only in the rare
case a cached prefix reaches into the question), each image's from its vision-tower output,
and the thumbnail and camera features from preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from fleetvl.vlm.processor import Prompt, QwenVLProcessor
from fleetvl.vlm.scope import ScopeInputs, question_span, request_inputs

__all__ = ["engine_scope_inputs"]


def engine_scope_inputs(
    processor: QwenVLProcessor,
    embed_ids: Callable[[np.ndarray], np.ndarray],
    prompt: Prompt,
    cached: int,
    suffix_embeds: np.ndarray,
    encoded: Mapping[int, np.ndarray],
    given: Mapping[int, np.ndarray],
) -> list[ScopeInputs]:
    """The score's inputs for ``prompt``: ``suffix_embeds`` are the input embeddings of the
    tokens after the ``cached`` prefix, ``encoded`` / ``given`` the vision outputs computed
    now / supplied by the caller, by image index; ``embed_ids`` embeds token ids."""
    if not prompt.images:
        return []
    p = processor
    start, end = question_span(prompt.input_ids, p.image_token_id, p.special_token_ids)
    if start >= cached:
        question = suffix_embeds[start - cached : end - cached]
    else:
        question = embed_ids(prompt.input_ids[start:end])
    vision = [encoded.get(i, given.get(i)) for i in range(len(prompt.images))]
    return request_inputs(question, vision, [img.thumb for img in prompt.images],
                          [img.camera for img in prompt.images])  # fmt: skip
