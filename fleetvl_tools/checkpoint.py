"""Build Qwen-VL checkpoints locally: real transformers classes, random weights, own tokenizer.

No weights can be downloaded, so ``fleetvl model init`` writes a directory with the same files
a Qwen2.5-VL release carries (config.json, safetensors, tokenizer.json, tokenizer_config.json,
preprocessor_config.json, chat_template.jinja) via ``save_pretrained``. Everything downstream
loads it through the code path a user's real directory takes.

Needs the ``export`` extra (torch, transformers); the edge runtime never imports this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TypedDict

from fleetvl_tools.presets import SPECIAL_TOKENS, Preset

__all__ = ["build_checkpoint", "train_tokenizer"]

log = logging.getLogger(__name__)

# Text the tokenizer learns its merges from: the questions and answers of the fleet's sites.
_CORPUS = """\
What does the oil-level gauge read? The oil level is at 62 percent.
Is breaker 3 open or closed? Breaker 3 is closed. Which phase is hottest: A, B or C?
Read the seven-segment meter. The meter reads 118.4 kV. The transformer temperature is 71 C.
Which shelf row is out of stock? Row 2 is empty. How many red items are on the top row? Four.
Are any price tags missing? Two price tags are missing on the bottom shelf.
You are a helpful assistant. Describe the image. Answer with a single word or number.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 25 50 75 100 percent
substation feeder bay switchgear insulator bushing radiator pressure valve alarm normal fault
store aisle shelf cereal milk bread soda price label empty full left right top middle bottom
yes no open closed high low red green blue yellow white black orange purple none unknown
"""


def train_tokenizer(
    vocab_size: int, progress: Callable[[str], None] | None = None, extra_corpus: str = ""
):
    """Train a byte-level BPE tokenizer with Qwen's pre-tokenizer and special tokens.

    ``extra_corpus`` is learned from too (the fleet presets add their questions and answers).

    The special tokens get the ids right after the ``vocab_size`` regular tokens, in Qwen's
    order, so ``<|endoftext|>`` is ``vocab_size`` and ``<|image_pad|>`` is ``vocab_size + 12``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # Qwen2's split pattern, then byte-level mapping: any UTF-8 text is encodable.
    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Repeat the corpus so rarer merges still reach the frequency floor.
    tok.train_from_iterator(
        [_CORPUS] * 8 + ([extra_corpus] * 4 if extra_corpus else []), trainer=trainer
    )
    # Pad with inert filler tokens so special-token ids sit exactly at vocab_size. They are
    # special, so decoding skips them: a random model that emits them prints nothing there.
    have = tok.get_vocab_size()
    if have < vocab_size:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(vocab_size - have)])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    if progress:
        progress(f"tokenizer trained: {tok.get_vocab_size()} tokens")
    return tok


def _chat_template() -> str:
    return (resources.files("fleetvl.vlm") / "templates" / "qwen2_vl_chat.jinja").read_text()


class _CommonConfig(TypedDict):
    """The top-level ``config.json`` keys both families share."""

    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_id: int


def _config(preset: Preset, special_base: int):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {tok: special_base + i for i, tok in enumerate(SPECIAL_TOKENS)}
    text: dict[str, object] = dict(preset.text)
    mrope = text.pop("mrope_section")
    theta = text.pop("rope_theta")
    text.pop("tie_word_embeddings")
    tie = preset.text["tie_word_embeddings"]
    text.update(
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=tie,
        use_sliding_window=False,
    )
    common: _CommonConfig = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": tie,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    v = dict(preset.vision)
    if preset.family == "qwen2_5_vl":
        vision = {
            **v,
            "hidden_act": "silu",
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
        }
        # transformers' @strict configs take keys they do not declare (bos_token_id) through
        # __post_init__(**kwargs), which its signature does not show.
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)  # type: ignore[misc]
    # Qwen2-VL's tower: plain ViT with a 4x MLP and no windows; `hidden_size` is its output.
    vision = {
        "depth": v["depth"],
        "embed_dim": v["hidden_size"],
        "hidden_size": v["out_hidden_size"],
        "num_heads": v["num_heads"],
        "mlp_ratio": 4,
        "hidden_act": "quick_gelu",
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(text_config=text, vision_config=vision, **common)  # type: ignore[misc]


def build_checkpoint(
    preset: Preset,
    out_dir: str | Path,
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a complete Hugging Face Qwen-VL directory for ``preset`` into ``out_dir``.

    Weights are random (seeded), including the q/k/v biases that transformers initializes to
    zero: a zero bias is dropped by the onnxruntime-genai builder, which would hide an export
    bug that a real checkpoint triggers.
    """
    import torch
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    say = progress or (lambda msg: log.info(msg))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = ""
    if preset.corpus == "fleet":
        from fleetvl_tools.fleetdata.corpus import corpus_text

        extra = corpus_text()
    tok = train_tokenizer(preset.bpe_vocab, say, extra)
    if tok.get_vocab_size() > preset.text["vocab_size"]:
        raise ValueError("preset's vocab_size is smaller than its tokenizer")
    config = _config(preset, special_base=preset.bpe_vocab)
    say(f"building {preset.family} '{preset.name}' with random weights (seed {seed})")
    torch.manual_seed(seed)
    cls = (
        Qwen2_5_VLForConditionalGeneration
        if preset.family == "qwen2_5_vl"
        else Qwen2VLForConditionalGeneration
    )
    if device == "cpu":
        model = cls(config).eval()
    else:
        # Billions of parameters: initialize them where they will live, in their dtype.
        default = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            with torch.device(device):
                model = cls(config).eval()
        finally:
            torch.set_default_dtype(default)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                param.normal_(0.0, 0.5)
            elif param.dim() >= 2 and preset.init_std != 0.02:
                param.normal_(0.0, preset.init_std)
    model = model.to(getattr(torch, dtype))
    n_params = sum(p.numel() for p in model.parameters())
    say(f"saving {n_params / 1e6:.1f}M parameters ({dtype}) to {out}")
    model.save_pretrained(out)

    hf_tok = Qwen2Tokenizer(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,  # type: ignore[arg-type]  # Qwen has no unk token; transformers takes None
        add_prefix_space=False,
    )
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=preset.min_pixels, max_pixels=preset.max_pixels
    )
    # The processor class wants a video processor, which needs torchvision; we write the
    # files a Qwen release has (and that AutoProcessor reads) one by one instead.
    hf_tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(_chat_template())
    proc = "Qwen2_5_VLProcessor" if preset.family == "qwen2_5_vl" else "Qwen2VLProcessor"
    (out / "processor_config.json").write_text(json.dumps({"processor_class": proc}, indent=2))
    say("checkpoint ready")
    return out
