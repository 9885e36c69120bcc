"""Named model presets for checkpoints built without downloads.

Each preset is the ``config.json`` a real Qwen-VL directory would carry, so every loader reads
it exactly as it reads Qwen2.5-VL-3B. Random weights; sizes, not answers, are the point.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TypedDict

__all__ = ["PRESETS", "Preset", "get_preset"]

# The Qwen special tokens, in the order (and relative ids) of the real tokenizer.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


class TextConfig(TypedDict):
    """The text tower's settings (Hugging Face ``text_config`` keys, before the rope ones are
    folded into ``rope_parameters``)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list[int]
    tie_word_embeddings: bool


class VisionConfig(TypedDict):
    """The vision tower's settings (Qwen2.5-VL ``vision_config`` keys)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    fullatt_block_indexes: list[int]
    window_size: int


@dataclass(frozen=True)
class Preset:
    """A checkpoint recipe: the architecture's config and the tokenizer's size."""

    name: str
    family: str  # "qwen2_5_vl" or "qwen2_vl"
    text: TextConfig
    vision: VisionConfig
    bpe_vocab: int  # regular (non-special) tokens the locally trained tokenizer learns
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    description: str = ""
    # Std of the random weights. The tiny preset uses a large one so greedy decoding wanders
    # across the vocabulary instead of repeating one token: token-parity tests then bite.
    init_std: float = 0.02
    # Extra tokenizer-training text: "fleet" adds the fleet VQA questions and answers, so
    # they tokenize into few tokens.
    corpus: str = "base"

    def with_family(self, family: str) -> Preset:
        return Preset(
            name=self.name,
            family=family,
            text=copy.deepcopy(self.text),
            vision=copy.deepcopy(self.vision),
            bpe_vocab=self.bpe_vocab,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            description=self.description,
            init_std=self.init_std,
            corpus=self.corpus,
        )


_TINY_TEXT: TextConfig = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    # head_dim 16 -> 8 rotary pairs split over (t, h, w); transformers needs it explicit.
    "mrope_section": [2, 3, 3],
    # Untied: with a tied random head every token's best next token is itself.
    "tie_word_embeddings": False,
}

_TINY_VISION: VisionConfig = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "fullatt_block_indexes": [1],
    "window_size": 56,
}

_EDGE_TEXT: TextConfig = {
    # The text tower of Qwen2.5-0.5B.
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "mrope_section": [8, 12, 12],
    "tie_word_embeddings": True,
}

_EDGE_VISION: VisionConfig = {
    "depth": 8,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 896,
    # Qwen2.5-VL puts a full-attention block after every 8 windowed ones; scaled to depth 8.
    "fullatt_block_indexes": [3, 7],
    "window_size": 112,
}

# Qwen2.5-VL-7B-Instruct's published config.json, for cloud benchmarks.
_7B_TEXT: TextConfig = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "mrope_section": [16, 24, 24],
    "tie_word_embeddings": False,
}

_7B_VISION: VisionConfig = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "window_size": 112,
}

# The fleet demo models (trained by fleetvl_tools.training): 168 x 168 images, a small vocabulary,
# both together under 40 MB in fp16. The cloud model is ~4x the edge model.
_FLEET_IMAGE = 168 * 168


def _fleet_text(hidden: int, layers: int, heads: int, kv_heads: int) -> TextConfig:
    head_dim = hidden // heads
    # MRoPE splits head_dim / 2 rotary pairs over (t, h, w) in Qwen's 1 : 1.5 : 1.5 ratio.
    pairs = head_dim // 2
    t = pairs // 4
    h = (pairs - t) // 2
    return {
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": 1024,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "mrope_section": [t, h, pairs - t - h],
        "tie_word_embeddings": False,
    }


def _fleet_vision(hidden: int, depth: int, heads: int, out: int) -> VisionConfig:
    return {
        "depth": depth,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_heads": heads,
        "out_hidden_size": out,
        # One window spans the whole 168 px image: each image is one attention chunk, which
        # keeps transformers' per-chunk vision attention loop short in training.
        "fullatt_block_indexes": [depth - 1],
        "window_size": 168,
    }


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        family="qwen2_5_vl",
        text=_TINY_TEXT,
        vision=_TINY_VISION,
        bpe_vocab=1000,
        min_pixels=28 * 28 * 4,
        max_pixels=28 * 28 * 256,
        description="a few MB, for tests",
        init_std=0.15,
    ),
    "edge-bench": Preset(
        name="edge-bench",
        family="qwen2_5_vl",
        text=_EDGE_TEXT,
        vision=_EDGE_VISION,
        bpe_vocab=8000,
        description="Qwen2.5-VL with the text tower of Qwen2.5-0.5B, for edge benchmarks",
    ),
    "fleet-edge": Preset(
        name="fleet-edge",
        family="qwen2_5_vl",
        text=_fleet_text(hidden=192, layers=4, heads=6, kv_heads=2),
        vision=_fleet_vision(hidden=128, depth=4, heads=4, out=192),
        bpe_vocab=1000,
        min_pixels=_FLEET_IMAGE,
        max_pixels=_FLEET_IMAGE,
        description="fleet demo edge model (trained by `fleetvl train`), 4.1M parameters",
        corpus="fleet",
    ),
    "fleet-cloud": Preset(
        name="fleet-cloud",
        family="qwen2_5_vl",
        text=_fleet_text(hidden=320, layers=6, heads=5, kv_heads=1),
        vision=_fleet_vision(hidden=192, depth=6, heads=4, out=320),
        bpe_vocab=1000,
        min_pixels=_FLEET_IMAGE,
        max_pixels=_FLEET_IMAGE,
        description="fleet demo cloud model (trained by `fleetvl train`), 14.1M parameters",
        corpus="fleet",
    ),
    "qwen2.5-vl-7b": Preset(
        name="qwen2.5-vl-7b",
        family="qwen2_5_vl",
        text=_7B_TEXT,
        vision=_7B_VISION,
        bpe_vocab=8000,
        description="Qwen2.5-VL-7B's architecture (random weights; build it on a GPU)",
    ),
}


def get_preset(name: str, family: str | None = None) -> Preset:
    """Look up a preset, optionally switching it to the Qwen2-VL family."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    if family is None or family == preset.family:
        return preset
    if family not in ("qwen2_5_vl", "qwen2_vl"):
        raise ValueError(f"unknown model family {family!r}; choose qwen2_5_vl or qwen2_vl")
    return preset.with_family(family)
