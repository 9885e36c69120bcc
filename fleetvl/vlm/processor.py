"""Tokenizer, chat template and prompt assembly for Qwen-VL, without transformers.

Reads the files of a Hugging Face directory (or of a bundle, which copies them):
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja`` (or the template inside
``tokenizer_config.json``), ``preprocessor_config.json`` and ``config.json``. The template is
rendered with Jinja2's sandbox as transformers does, then each ``<|image_pad|>`` is expanded to
one token per merged patch: the same ids transformers' processor produces (tested).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, TypeVar

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from fleetvl.errors import BundleError, PromptError
from fleetvl.vlm.image import ImageConfig, PreprocessedImage, PreprocessorConfig

__all__ = ["Prompt", "QwenVLProcessor"]


@dataclass
class Prompt:
    """A tokenized prompt with its images, ready for prefill."""

    input_ids: np.ndarray  # int64 [S]
    images: list[PreprocessedImage]
    text: str

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


_Config = TypeVar("_Config")


class _TokenizerConfig(TypedDict, total=False):
    chat_template: str


class _TextConfig(TypedDict, total=False):
    eos_token_id: int | list[int]
    max_position_embeddings: int


class _ModelConfig(_TextConfig, total=False):
    image_token_id: int
    vision_start_token_id: int
    text_config: _TextConfig


def _read_json(path: Path, shape: type[_Config]) -> _Config:
    """A Hugging Face JSON config, as ``shape`` describes the keys the caller reads (read field
    by field and converted by the caller; the file is not checked against it)."""
    try:
        data: _Config = json.loads(path.read_text())
        return data
    except FileNotFoundError:
        raise BundleError(f"missing {path.name} in {path.parent}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None


def _raise_template_error(message: str) -> None:
    raise PromptError(f"chat template refused the messages: {message}")


class QwenVLProcessor:
    """Turns chat messages + images into token ids, and token ids back into text."""

    def __init__(self, model_dir: str | Path, max_prompt_tokens: int | None = None) -> None:
        d = Path(model_dir)
        try:
            self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise BundleError(f"cannot load tokenizer.json from {d}: {exc}") from None
        tok_cfg = _read_json(d / "tokenizer_config.json", _TokenizerConfig)
        template_file = d / "chat_template.jinja"
        template = (
            template_file.read_text() if template_file.exists() else tok_cfg.get("chat_template")
        )
        if not template:
            raise BundleError(f"no chat template in {d} (chat_template.jinja or tokenizer_config)")
        # Same environment as transformers' template compiler, so renders match byte for byte.
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(template)
        self.image_config = ImageConfig.from_preprocessor_config(
            _read_json(d / "preprocessor_config.json", PreprocessorConfig)
        )
        cfg = _read_json(d / "config.json", _ModelConfig)
        self.image_token_id = int(cfg["image_token_id"])
        self.vision_start_token_id = int(cfg["vision_start_token_id"])
        text_cfg = cfg.get("text_config", cfg)
        eos = text_cfg.get("eos_token_id", cfg.get("eos_token_id"))
        # A config without eos_token_id adds none (no token id is None).
        self.eos_token_ids: tuple[int, ...] = tuple(
            eos if isinstance(eos, list) else [] if eos is None else [eos]
        )
        im_end = self.tokenizer.token_to_id("<|im_end|>")
        endoftext = self.tokenizer.token_to_id("<|endoftext|>")
        extra = tuple(t for t in (im_end, endoftext) if t is not None)
        self.eos_token_ids = tuple(dict.fromkeys(self.eos_token_ids + extra))
        self.max_prompt_tokens = max_prompt_tokens or int(
            text_cfg.get("max_position_embeddings", 32768)
        )
        self.merge_size = self.image_config.merge_size
        # Added special tokens (chat markers, vision markers): never part of a question's words.
        self.special_token_ids = frozenset(
            i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special
        )

    def render(
        self, messages: Sequence[Mapping[str, object]], add_generation_prompt: bool = True
    ) -> str:
        """Render chat messages through the model's own template."""
        if not messages:
            raise PromptError("messages are empty: send at least one user message")
        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # a malformed message breaks inside the template
            raise PromptError(f"messages do not fit the chat template: {exc}") from None

    def encode(
        self, messages: Sequence[Mapping[str, object]], images: Sequence[PreprocessedImage] = ()
    ) -> Prompt:
        """Render, tokenize and expand image placeholders.

        Raises:
            PromptError: empty text, placeholder/image count mismatch, or too many tokens.
        """
        text = self.render(messages)
        return self.encode_text(text, images)

    def encode_text(self, text: str, images: Sequence[PreprocessedImage] = ()) -> Prompt:
        """Tokenize already-rendered text whose ``<|image_pad|>`` markers stand for ``images``."""
        if not text.strip():
            raise PromptError("prompt is empty")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        pads = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(pads) != len(images):
            raise PromptError(
                f"prompt has {len(pads)} image placeholders but {len(images)} images were given"
            )
        out: list[int] = []
        prev = 0
        for pos, img in zip(pads, images, strict=True):
            out.extend(ids[prev:pos])
            out.extend([self.image_token_id] * img.num_tokens(self.merge_size))
            prev = pos + 1
        out.extend(ids[prev:])
        if len(out) > self.max_prompt_tokens:
            raise PromptError(
                f"prompt is {len(out)} tokens, over the limit of {self.max_prompt_tokens}; "
                "shorten the text or send smaller images"
            )
        return Prompt(np.asarray(out, dtype=np.int64), list(images), text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
