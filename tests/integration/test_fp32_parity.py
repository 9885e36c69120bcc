"""fp32 bundle on ONNX Runtime vs transformers on the same tiny checkpoint, both families.

Must show: logits within 1e-4 relative and identical greedy tokens for at least 20 prompts
with 1-2 images of different sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edge_agent.engine.engine import EdgeEngine
from fleetvl.sampling import SamplingParams
from tests.helpers import hf_inputs, random_image

QUESTIONS = [
    "What does the gauge read?",
    "Which shelf row is empty?",
    "Is breaker 3 open?",
    "How many red items are on the top row?",
    "Which phase is hottest?",
]
SIZES = [(100, 150), (224, 224), (60, 420), (300, 200), (448, 336), (28, 56), (150, 90)]
NEW_TOKENS = 12


def _cases() -> list[tuple[list[tuple[int, int]], str]]:
    cases = []
    for i in range(20):
        n = 1 + i % 2
        sizes = [SIZES[(i + k * 3) % len(SIZES)] for k in range(n)]
        cases.append((sizes, QUESTIONS[i % len(QUESTIONS)]))
    return cases


@pytest.fixture(scope="module")
def pair(family: str, bundle_factory: Callable, checkpoint_factory: Callable):
    import torch
    from transformers import AutoModelForImageTextToText

    engine = EdgeEngine(bundle_factory(family, "fp32"))
    model = AutoModelForImageTextToText.from_pretrained(
        checkpoint_factory(family), dtype=torch.float32
    ).eval()
    return engine, model


def test_logits_and_greedy_tokens_match_transformers(pair, family: str) -> None:
    import torch

    engine, model = pair
    worst = 0.0
    for n, (sizes, question) in enumerate(_cases()):
        images = [random_image(h, w, seed=n * 7 + k) for k, (h, w) in enumerate(sizes)]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        prompt = engine.encode([{"role": "user", "content": content}], images)
        ours = engine.generate(prompt, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
        kw = hf_inputs(prompt, engine.processor.image_token_id)
        with torch.no_grad():
            ref_logits = model(**kw).logits[0, -1].numpy()
            out = model.generate(
                **kw, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )
        first = engine.generate(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
        assert first.token_ids[0] == int(np.argmax(ref_logits))
        rel = float(np.abs(engine._logits[0, 0] - ref_logits).max() / np.abs(ref_logits).max())
        worst = max(worst, rel)
        assert rel < 1e-4, f"case {n} ({sizes}): logits differ by {rel:.2e} relative"
        ref_tokens = out[0, prompt.input_ids.shape[0] :].tolist()
        assert ours.token_ids == ref_tokens, f"case {n} ({family}, {sizes}) diverged"
    print(f"{family}: worst relative logit error over 20 prompts {worst:.2e}")
