"""The bundle runs unchanged under onnxruntime-genai (og.Generator) with our greedy tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.engine.engine import EdgeEngine
from fleetvl.sampling import SamplingParams
from tests.helpers import random_image

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is in the export extra")
NEW = 16


def _og_tokens(model, text: str, image_path: Path | None, max_length: int) -> list[int]:
    proc = model.create_multimodal_processor()
    inputs = proc(text, images=og.Images.open(str(image_path)) if image_path else None)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, do_sample=False)
    gen = og.Generator(model, params)
    gen.set_inputs(inputs)
    out: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("with_image", [True, False])
def test_og_generator_matches_engine(
    family: str, with_image: bool, bundle_factory: Callable, tmp_path: Path
) -> None:
    bundle = bundle_factory(family, "fp32")
    engine = EdgeEngine(bundle)
    model = og.Model(str(bundle))
    image_path = None
    images = []
    if with_image:
        image_path = tmp_path / "frame.png"
        random_image(130, 170, seed=5).save(image_path)
        images = [image_path.read_bytes()]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": "Oil level?"}]
    messages = [{"role": "user", "content": content}]
    prompt = engine.encode(messages, images)
    ours = engine.generate(prompt, SamplingParams(max_tokens=NEW, ignore_eos=True)).token_ids
    theirs = _og_tokens(model, engine.processor.render(messages), image_path, len(prompt) + NEW)
    assert len(ours) == NEW
    assert theirs[:NEW] == ours
