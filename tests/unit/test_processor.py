"""Chat template and token ids: parity with transformers' tokenizer; prompt errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetvl.errors import BundleError, PromptError
from fleetvl.vlm.image import ImageConfig, preprocess
from fleetvl.vlm.processor import QwenVLProcessor
from tests.helpers import random_image

MESSAGES = [
    [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What does the gauge read?"}],
        }
    ],
    [
        {"role": "system", "content": "Answer in one word."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Row?"}, {"type": "image"}, {"type": "image"}],
        },
    ],
    [{"role": "user", "content": "Is breaker 3 open or closed?"}],
]


@pytest.mark.parametrize("messages", MESSAGES)
def test_render_and_ids_match_transformers(tiny_checkpoint: Path, messages: list) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    proc = QwenVLProcessor(tiny_checkpoint)
    text = proc.render(messages)
    assert text == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    n_img = text.count("<|image_pad|>")
    cfg = ImageConfig(min_pixels=3136, max_pixels=28 * 28 * 64)
    images = [preprocess(random_image(90 + 30 * i, 120, seed=i), cfg) for i in range(n_img)]
    prompt = proc.encode(messages, images)
    # transformers' processor: each placeholder becomes num_tokens copies, then tokenize.
    parts = text.split("<|image_pad|>")
    expanded = parts[0] + "".join(
        "<|image_pad|>" * im.num_tokens() + rest for im, rest in zip(images, parts[1:], strict=True)
    )
    assert prompt.input_ids.tolist() == tok(expanded, add_special_tokens=False)["input_ids"]
    assert proc.decode(tok("shelf row 2", add_special_tokens=False)["input_ids"]) == "shelf row 2"


def test_prompt_errors_are_typed(tiny_checkpoint: Path) -> None:
    proc = QwenVLProcessor(tiny_checkpoint, max_prompt_tokens=50)
    with pytest.raises(PromptError, match="empty"):
        proc.encode([])
    with pytest.raises(PromptError, match="1 image placeholders but 0 images"):
        proc.encode(MESSAGES[0], [])
    with pytest.raises(PromptError, match="over the limit of 50"):
        proc.encode([{"role": "user", "content": "gauge " * 200}])
    with pytest.raises(PromptError, match="empty"):
        proc.encode_text("   ")


def test_missing_files_raise_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="tokenizer.json"):
        QwenVLProcessor(tmp_path)
