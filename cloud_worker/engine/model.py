"""The full Qwen-VL in transformers: loading, per-request prefill, the batched decode step.

Prefill runs transformers' own vision tower and language model over a batch of requests
(images merged at the placeholder tokens, MRoPE positions from ``fleetvl.vlm.mrope``) and
hands back what the out-of-scope score reads (:mod:`fleetvl.vlm.scope`); the batched decode
step is in :mod:`cloud_worker.engine.decode_step`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cloud_worker.engine.attention import use_varlen_vision_attention
from fleetvl.cache import FleetCache, KVShape
from fleetvl.cache.vision import VisionCache
from fleetvl.vlm.mrope import rope_index
from fleetvl.vlm.processor import Prompt
from fleetvl.vlm.scope import ScopeInputs, question_span, request_inputs

if TYPE_CHECKING:
    from cloud_worker.engine.requests import EngineRequest

__all__ = [
    "LoadedModel",
    "PrefillResult",
    "cached_features",
    "prefill_cached",
    "load_model",
    "model_digest",
    "prefill",
]

log = logging.getLogger("fleetvl.cloud")


@dataclass
class LoadedModel:
    model: torch.nn.Module  # Qwen2_5_VL / Qwen2_VL ForConditionalGeneration
    device: torch.device
    dtype: torch.dtype
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    spatial_merge_size: int
    image_token_id: int

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model


class TenantVisionCaches:
    """The vision-encoder cache of one model, a namespace per tenant: tenants share no entry
    (a hit's timing must not tell one tenant what images another sent)."""

    def __init__(self, cache: FleetCache, model_digest: str, lm: LoadedModel) -> None:
        self.cache = cache
        self.digest = model_digest
        self.shape = KVShape(lm.num_layers, lm.kv_heads, lm.head_dim)
        self.hidden = lm.hidden_size
        self._by_tenant: dict[str | None, VisionCache] = {}

    def get(self, tenant: str | None) -> VisionCache:
        if tenant not in self._by_tenant:
            self._by_tenant[tenant] = self.cache.for_model(
                self.digest, self.shape, self.hidden, tenant=tenant
            ).vision
        return self._by_tenant[tenant]


def cached_features(
    asks: Sequence[tuple[VisionCache | None, Prompt]], merge: int
) -> dict[tuple[int, int], torch.Tensor]:
    """Vision features of these prompts' images found in the shared cache, each prompt in its
    own (tenant's) namespace, one MGET per namespace; by (prompt, image) index."""
    out: dict[tuple[int, int], torch.Tensor] = {}
    by_cache: dict[int, tuple[VisionCache, list[tuple[int, int]]]] = {}
    for b, (cache, prompt) in enumerate(asks):
        if cache is not None and prompt.images:
            keys = by_cache.setdefault(id(cache), (cache, []))[1]
            keys.extend((b, i) for i in range(len(prompt.images)))
    for cache, keys in by_cache.values():
        imgs = [asks[b][1].images[i] for b, i in keys]
        got = cache.get_many([(img.digest, img.num_tokens(merge)) for img in imgs]) or {}
        out.update({keys[j]: torch.from_numpy(f) for j, f in got.items()})
    return out


def prefill_cached(
    lm: LoadedModel,
    reqs: Sequence[EngineRequest],
    between_layers: Callable[[], None],
    special_ids: frozenset[int],
) -> list[PrefillResult]:
    """:func:`prefill` with each request's vision-encoder outputs taken from its (tenant's)
    cache where present, and those it computed stored there (unless its policy only reads)."""
    given = cached_features([(r.vision_cache, r.prompt) for r in reqs], lm.spatial_merge_size)
    results = prefill(lm, [r.prompt for r in reqs], given, between_layers=between_layers,
                      special_ids=special_ids)  # fmt: skip
    for r, pre in zip(reqs, results, strict=True):
        r.vision_hits = len(r.prompt.images) - len(pre.image_features)
        if r.vision_cache is not None and r.store_vision:
            for i, f in pre.image_features.items():
                r.vision_cache.put_async(r.prompt.images[i].digest, f.float().cpu().numpy())
        r.scope_inputs = pre.scope_inputs
    return results


def load_model(
    model_dir: str | Path,
    device: str = "auto",
    dtype: str | None = None,
    vision_attention: str = "varlen",
) -> LoadedModel:
    """Load a Qwen2.5-VL or Qwen2-VL directory: bf16 on CUDA, fp32 on CPU by default.

    ``vision_attention``: ``"varlen"`` batches the vision tower's window attention
    (:mod:`cloud_worker.engine.attention`); ``"transformers"`` keeps its per-window calls.
    """
    if vision_attention not in ("varlen", "transformers"):
        raise ValueError(f"vision_attention must be 'varlen' or 'transformers', "
                         f"got {vision_attention!r}")  # fmt: skip
    from transformers import AutoConfig, AutoModelForImageTextToText

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))  # fmt: skip
    dt = (
        getattr(torch, dtype)
        if dtype
        else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    )
    cfg = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=dt, attn_implementation="sdpa"
    ).to(dev)
    model.eval()
    if vision_attention == "varlen" and not use_varlen_vision_attention(model):
        log.warning("transformers has no attention registry: per-window vision attention")
    text = cfg.get_text_config()
    heads = text.num_attention_heads
    return LoadedModel(
        model=model,
        device=dev,
        dtype=dt,
        num_layers=text.num_hidden_layers,
        kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab_size=text.vocab_size,
        spatial_merge_size=cfg.vision_config.spatial_merge_size,
        image_token_id=cfg.image_token_id,
    )


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [vocab] float32, last prompt position
    keys: list[torch.Tensor]  # per layer [kv_heads, n, head_dim]
    values: list[torch.Tensor]
    next_position: int  # MRoPE position of the first generated token
    image_features: dict[int, torch.Tensor]  # by image index, computed here (for the cache)
    # What the out-of-scope score reads, one per image; empty without images, or when an
    # image has no thumbnail (built outside ``fleetvl.vlm.image``).
    scope_inputs: list[ScopeInputs] = field(default_factory=list)


@torch.inference_mode()
def prefill(
    lm: LoadedModel,
    prompts: list[Prompt],
    given: dict[tuple[int, int], torch.Tensor] | None = None,
    between_layers: Callable[[], None] | None = None,
    special_ids: frozenset[int] = frozenset(),
) -> list[PrefillResult]:
    """Vision + prompt of several requests in one pass through transformers' modules.

    All images go through the vision tower in one call (it separates them by grid); the
    prompts are right-padded into one batch, so a real token never attends to padding and
    each request's KV and last-position logits are what a prefill of it alone would give.
    Batching amortizes the per-kernel and Python costs that dominate a single prefill.
    ``given[(request, image)]`` are vision features from the cache; those images are not
    encoded, and ``image_features`` of the result holds only the ones computed here.

    ``between_layers`` is called before every vision block and decoder layer: an eager
    prefill is bound by the host launching its kernels, so the engine slips decode steps
    of the running requests in there, keeping the device busy.

    Each result's ``scope_inputs`` hold, per image, the mean input embedding of the
    question's words (:func:`~fleetvl.vlm.scope.question_span`, bounded by ``special_ids``:
    the processor's ``special_token_ids``) and the image's mean vision feature (computed or
    ``given``), with its thumbnail: the means are taken on the device and reach the host in
    one small copy for the whole batch, queued before the language model so that waiting for
    it never idles the device.
    """
    if between_layers is None:
        return _prefill(lm, prompts, given, special_ids)
    hook = lambda *_: between_layers()  # noqa: E731
    layers = [*lm.model.model.visual.blocks, *lm.language_model.layers]
    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        return _prefill(lm, prompts, given, special_ids)
    finally:
        for h in handles:
            h.remove()


def _prefill(
    lm: LoadedModel,
    prompts: list[Prompt],
    given: dict[tuple[int, int], torch.Tensor] | None,
    special_ids: frozenset[int],
) -> list[PrefillResult]:
    m = lm.model
    dev = lm.device
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    pos = np.zeros((3, len(prompts), width), dtype=np.int64)
    next_pos = []
    for b, p in enumerate(prompts):
        n = len(p)
        ids[b, :n] = torch.from_numpy(p.input_ids)
        mask[b, :n] = 1
        pb, nxt = rope_index(
            p.input_ids, lm.image_token_id, [i.grid_thw for i in p.images], lm.spatial_merge_size
        )
        pos[:, b, :n] = pb
        next_pos.append(nxt)
    ids, mask = ids.to(dev), mask.to(dev)
    embeds = m.get_input_embeddings()(ids)
    given = given or {}
    keys = [(b, i) for b, p in enumerate(prompts) for i in range(len(p.images))]
    todo = [k for k in keys if k not in given]
    computed: dict[tuple[int, int], torch.Tensor] = {}
    if todo:
        imgs = [prompts[b].images[i] for b, i in todo]
        pv = torch.from_numpy(np.concatenate([i.pixel_values for i in imgs])).to(dev, lm.dtype)
        grid = torch.tensor([i.grid_thw for i in imgs], device=dev)
        computed = dict(zip(todo, m.model.get_image_features(pv, grid).pooler_output, strict=True))
    feats = [computed[k] if k in computed else given[k].to(dev, embeds.dtype) for k in keys]
    scope_copy = _ScopeCopy(lm, prompts, embeds, dict(zip(keys, feats, strict=True)),
                            special_ids)  # fmt: skip
    if keys:
        # Placeholders appear in the same order as the images: batch row, then position.
        placeholder = ((ids == lm.image_token_id) & (mask == 1))[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(placeholder, torch.cat(feats).to(embeds.dtype))
    from transformers import DynamicCache

    cache = DynamicCache(config=m.config)
    out = lm.language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=torch.from_numpy(pos).to(dev),
        past_key_values=cache,
        use_cache=True,
    )
    last = out.last_hidden_state[
        torch.arange(len(prompts), device=dev), torch.tensor(lengths, device=dev) - 1
    ]
    logits = m.lm_head(last).float()
    layers = out.past_key_values.layers
    scope = scope_copy.inputs()
    results = []
    for b, p in enumerate(prompts):
        n = lengths[b]
        results.append(
            PrefillResult(
                logits=logits[b],
                keys=[layer.keys[b, :, :n] for layer in layers],
                values=[layer.values[b, :, :n] for layer in layers],
                next_position=next_pos[b],
                image_features={
                    i: computed[(b, i)] for i in range(len(p.images)) if (b, i) in computed
                },  # fmt: skip
                scope_inputs=scope[b],
            )
        )
    return results


class _ScopeCopy:
    """The scope score's per-request means, on their way to the host (see :func:`prefill`).

    Rows: for each request with images, its question's mean embedding, then each image's
    mean vision feature, in float32.
    """

    def __init__(
        self,
        lm: LoadedModel,
        prompts: list[Prompt],
        embeds: torch.Tensor,
        feats: dict[tuple[int, int], torch.Tensor],
        special_ids: frozenset[int],
    ) -> None:
        self.prompts = prompts
        self.host: torch.Tensor | None = None
        self.event: torch.cuda.Event | None = None
        rows = []
        for b, p in enumerate(prompts):
            if not p.images:
                continue
            start, end = question_span(p.input_ids, lm.image_token_id, special_ids)
            if end <= start:  # an image as the prompt's last token: no text to average
                start, end = len(p) - 1, len(p)
            rows.append(embeds[b, start:end].float().mean(0))
            rows += [feats[(b, i)].float().mean(0) for i in range(len(p.images))]
        if not rows:
            return
        dev_rows = torch.stack(rows)
        if dev_rows.device.type == "cuda":
            self.host = torch.empty(dev_rows.shape, dtype=torch.float32, pin_memory=True)
            self.host.copy_(dev_rows, non_blocking=True)
            self.event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # untyped in torch
            self.event.record()
        else:
            self.host = dev_rows

    def inputs(self) -> list[list[ScopeInputs]]:
        """Per request its scope inputs (waits for the copy; call after launching the LM)."""
        if self.host is None:
            return [[] for _ in self.prompts]
        if self.event is not None:
            self.event.synchronize()
        rows = self.host.numpy()
        out: list[list[ScopeInputs]] = []
        at = 0
        for p in self.prompts:
            n = len(p.images)
            if not n:
                out.append([])
                continue
            q, vision = rows[at : at + 1], [rows[at + 1 + i][None] for i in range(n)]
            at += 1 + n
            thumbs = [img.thumb for img in p.images]
            cams = [img.camera for img in p.images]
            out.append([] if any(t is None for t in thumbs)
                       else request_inputs(q, vision, thumbs, cams))  # fmt: skip
        return out


def model_digest(model_dir: str | Path) -> str:
    """Cache namespace of a model directory: its config, and per weight file its name, size
    and three 1 MiB samples (start, middle, end). Two checkpoints of one architecture differ
    in every sample; hashing all 16 GB of a 7B model at each start would cost a minute."""
    import hashlib

    d = Path(model_dir)
    h = hashlib.sha256((d / "config.json").read_bytes())
    chunk = 1 << 20
    for f in sorted(d.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            for at in (0, max(size // 2 - chunk // 2, 0), max(size - chunk, 0)):
                fh.seek(at)
                h.update(fh.read(chunk))
    return h.hexdigest()
