"""The edge engine: Qwen-VL generation on ONNX Runtime sessions.

One request at a time per engine (the site agent runs several engines or queues requests);
a lock makes concurrent calls wait rather than corrupt the KV arena.

Data path of a request: decode + preprocess images (NumPy) -> vision session, one run per
image (window arithmetic is inside the graph) -> embedding session (image features merged at
the placeholders) -> decoder prefill over the uncached suffix (LM head on the last position
only) -> sample -> per step: embedding of one token, decoder with the KV arena bound in place,
sample, confidence, stop checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Unpack

import numpy as np
import onnxruntime as ort

from edge_agent.engine.bundle import EdgeBundle, SessionConfig
from edge_agent.engine.kv_arena import KVArena, KVPrefix
from edge_agent.engine.scoping import engine_scope_inputs
from edge_agent.engine.types import (
    CancelToken,
    EarlyStop,
    Generation,
    GenerationResult,
    StreamOptions,
    Timings,
    TokenEvent,
)
from fleetvl.engines import Engine
from fleetvl.errors import InputError, PromptError
from fleetvl.sampling import Sampler, SamplingParams
from fleetvl.vlm.confidence import (
    ConfidenceTracker,
    TokenLogprob,
    token_confidence,
    token_logprob,
)
from fleetvl.vlm.detokenize import IncrementalDetokenizer, find_stop
from fleetvl.vlm.image import ImageInput, PreprocessedImage, prepare_image
from fleetvl.vlm.mrope import rope_index
from fleetvl.vlm.processor import Prompt
from fleetvl.vlm.scope import ScopeModel

__all__ = ["EdgeEngine", "Generation", "edge_engine"]


class EdgeEngine:
    """Loads a bundle and answers image questions with it."""

    def __init__(self, bundle_dir: str | Path, config: SessionConfig | None = None) -> None:
        self.bundle = EdgeBundle(bundle_dir, config)
        self.processor = self.bundle.processor
        s = self.bundle.shape
        self._arena = KVArena(
            s.num_layers, s.num_kv_heads, s.head_dim, self.bundle.config.max_context
        )
        self._binding = self.bundle.decoder.io_binding()
        self._arena.bind(self._binding)
        self._logits = np.zeros((1, 1, s.vocab_size), dtype=np.float32)
        self._binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits))
        self._mask = np.ones((1, self.bundle.config.max_context), dtype=np.int64)
        # Fixed decode-step buffers, wrapped once (OrtValues share the NumPy memory).
        h = s.hidden_size
        self._step_token = np.zeros((1, 1), dtype=np.int64)
        self._step_embeds = np.zeros((1, 1, h), dtype=np.float32)
        self._step_pos = np.zeros((3, 1, 1), dtype=np.int64)
        self._step_hidden = np.zeros((1, 1, h), dtype=np.float32)
        self._no_features = np.zeros((0, h), dtype=np.float32)
        wrap = ort.OrtValue.ortvalue_from_numpy
        self._step_embeds_ov = wrap(self._step_embeds)
        self._step_pos_ov = wrap(self._step_pos)
        self._step_hidden_ov = wrap(self._step_hidden)
        self._emb_binding = self.bundle.embedding.io_binding()
        self._emb_binding.bind_ortvalue_input("input_ids", wrap(self._step_token))
        self._emb_binding.bind_ortvalue_input("image_features", wrap(self._no_features))
        self._emb_binding.bind_ortvalue_output("inputs_embeds", self._step_embeds_ov)
        self._lock = threading.Lock()

    @property
    def digest(self) -> str:
        return self.bundle.digest

    # -- inputs -----------------------------------------------------------------------------

    def prepare_images(self, images: Sequence[ImageInput]) -> list[PreprocessedImage]:
        """Decode and preprocess images (bytes are untrusted: see :func:`decode_image`)."""
        return [prepare_image(img, self.processor.image_config) for img in images]

    def encode(
        self, messages: Sequence[Mapping[str, object]], images: Sequence[ImageInput] = ()
    ) -> Prompt:
        return self.processor.encode(messages, self.prepare_images(images))

    # -- generation -------------------------------------------------------------------------

    def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, **kw: Unpack[StreamOptions]
    ) -> GenerationResult:
        """Run to completion; same arguments as :meth:`stream`."""
        gen = self.stream(prompt, params, **kw)
        for _ in gen:
            pass
        assert gen.result is not None  # set by the generator's last step
        return gen.result

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        prefix: KVPrefix | None = None,
        capture_prefix: int | None = None,
        stop_when: EarlyStop | None = None,
        cancel: CancelToken | None = None,
        confidence: bool = True,
        image_features: Mapping[int, np.ndarray] | None = None,
        scope: ScopeModel | None = None,
        refuse_out_of_scope: bool = False,
    ) -> Generation:
        """Generate tokens for ``prompt``, yielding them as they are produced.

        Args:
            prefix: KV of the prompt's first ``prefix.num_tokens`` tokens (from the cache);
                those tokens are not recomputed and images entirely inside it are not encoded.
            capture_prefix: copy the KV of this many prompt tokens into ``result.prefix``.
            stop_when: early-stop predicate on the running confidence.
            cancel: checked between steps; a cancelled generation ends with
                ``finish_reason="cancelled"`` and keeps what it produced.
            confidence: compute per-token confidence (≈0.3 ms/token at a 152k vocabulary).
            image_features: vision-encoder output by image index (from the cache); those
                images are not encoded. Features computed are returned in
                ``result.image_features``.
            scope: score the input with this out-of-scope model before prefill
                (``result.scope``; ``result.scope_inputs`` are kept either way for images).
            refuse_out_of_scope: an input ``scope`` calls out of scope ends at once with
                ``finish_reason="out_of_scope"`` and no tokens (nothing is prefilled).

        Raises:
            PromptError: prompt (with the answer budget) does not fit the context.
            InputError: inconsistent prefix.
        """
        params = params or SamplingParams()
        total = len(prompt) + params.max_tokens
        if total > self._arena.capacity:
            raise PromptError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) = {total} "
                f"exceeds the engine's context of {self._arena.capacity} tokens"
            )
        if prefix is not None and not 0 < prefix.num_tokens < len(prompt):
            raise InputError(
                f"prefix covers {prefix.num_tokens} tokens; it must be shorter than the prompt "
                f"({len(prompt)} tokens) and non-empty"
            )
        if capture_prefix is not None and not 0 < capture_prefix <= len(prompt):
            raise InputError(f"capture_prefix={capture_prefix} is outside the prompt")
        return Generation(
            lambda gen: self._run(
                gen,
                prompt,
                params,
                prefix,
                capture_prefix,
                stop_when,
                cancel,
                confidence,
                image_features,
                scope,
                refuse_out_of_scope,
            )
        )

    def image_spans(self, prompt: Prompt) -> list[tuple[int, int]]:
        """``[start, end)`` of each image's placeholder tokens in the prompt, in image order."""
        ids = prompt.input_ids
        tok = self.processor.image_token_id
        starts = np.flatnonzero((ids == tok) & np.concatenate([[True], ids[:-1] != tok]))
        m = self.bundle.spatial_merge_size
        return [
            (int(s), int(s) + img.num_tokens(m))
            for s, img in zip(starts, prompt.images, strict=True)
        ]

    def _encode_images(
        self,
        prompt: Prompt,
        cached: int,
        given: Mapping[int, np.ndarray],
        encoded: dict[int, np.ndarray],
    ) -> tuple[np.ndarray, int]:
        """Vision features for the placeholders after the cached prefix, and tokens encoded.

        Images entirely inside the prefix are skipped; one cut by the prefix's end contributes
        only its remaining rows. ``given`` features (from the cache) are used as they are;
        features computed here are put in ``encoded`` by image index.
        """
        b = self.bundle
        h = b.shape.hidden_size
        parts = []
        vision_tokens = 0
        for i, ((start, end), img) in enumerate(
            zip(self.image_spans(prompt), prompt.images, strict=True)
        ):
            if end <= cached:
                continue
            feats = given.get(i)
            if feats is not None and feats.shape != (end - start, h):
                raise InputError(
                    f"features given for image {i} have shape {feats.shape}, "
                    f"expected {(end - start, h)}"
                )
            if feats is None:
                # One run per image: attention never crosses images, the graph takes one grid.
                feats = b.vision.run(
                    ["image_features"],
                    {
                        "pixel_values": img.pixel_values,
                        "image_grid_thw": np.asarray([img.grid_thw], dtype=np.int64),
                    },
                )[0]
                encoded[i] = feats
                vision_tokens += end - start
            parts.append(feats[max(cached - start, 0) :])
        if not parts:
            return np.zeros((0, h), dtype=np.float32), 0
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return np.ascontiguousarray(out, dtype=np.float32), vision_tokens

    def _run(
        self,
        gen: Generation,
        prompt: Prompt,
        params: SamplingParams,
        prefix: KVPrefix | None,
        capture_prefix: int | None,
        stop_when: EarlyStop | None,
        cancel: CancelToken | None,
        with_confidence: bool,
        image_features: Mapping[int, np.ndarray] | None,
        scope: ScopeModel | None,
        refuse_out_of_scope: bool,
    ) -> Iterator[TokenEvent]:
        b = self.bundle
        eos = set() if params.ignore_eos else set(self.processor.eos_token_ids)
        with self._lock:
            t0 = time.perf_counter()
            timings = Timings(prompt_tokens=len(prompt))
            cached = prefix.num_tokens if prefix else 0
            timings.cached_tokens = cached
            encoded: dict[int, np.ndarray] = {}
            feats, timings.vision_tokens = self._encode_images(
                prompt, cached, image_features or {}, encoded
            )
            t_vis = time.perf_counter()
            timings.vision_s = t_vis - t0
            positions, next_pos = rope_index(
                prompt.input_ids,
                self.processor.image_token_id,
                [i.grid_thw for i in prompt.images],
                b.spatial_merge_size,
            )
            if prefix is not None:
                self._arena.load(prefix)
            suffix = prompt.input_ids[cached:]
            embeds = b.embedding.run(
                ["inputs_embeds"], {"input_ids": suffix[None, :], "image_features": feats}
            )[0]
            t_scope = time.perf_counter()
            inputs = engine_scope_inputs(self.processor, self._embed_ids, prompt, cached,
                                         embeds[0], encoded, image_features or {})  # fmt: skip
            verdict = scope.score(inputs) if scope is not None and inputs else None
            # With what preprocessing spent on the score's thumbnail and camera features.
            timings.scope_s = time.perf_counter() - t_scope + sum(
                img.scope_s for img in prompt.images
            )
            if verdict is not None and verdict.out_of_scope and refuse_out_of_scope:
                gen.result = GenerationResult(
                    text="", token_ids=[], finish_reason="out_of_scope",
                    confidence=ConfidenceTracker().summary(), tokens=[], timings=timings,
                    image_features=encoded, scope=verdict, scope_inputs=inputs,
                )  # fmt: skip
                return
            hidden = self._prefill(embeds, positions[:, None, cached:], len(prompt))
            timings.prefill_s = time.perf_counter() - t_vis
            captured = self._arena.export(capture_prefix) if capture_prefix else None

            sampler = Sampler(params)
            tracker = ConfidenceTracker()
            logprobs: list[TokenLogprob] = []
            detok = IncrementalDetokenizer(self.processor.decode)
            out_ids: list[int] = []
            text = ""
            finish = "length"
            t_first = 0.0
            kv_len = len(prompt)
            logits = self._logits[0, 0]
            for index in range(params.max_tokens):
                token = sampler(logits)
                if index == 0:
                    t_first = time.perf_counter()
                    timings.ttft_s = t_first - t0
                # Before token_confidence, which masks the logits buffer in place for a moment.
                lp = None
                if params.logprobs is not None:
                    lp = token_logprob(logits, token, params.logprobs, self.processor.decode)
                # In place: the logits buffer is ours until the next step overwrites it.
                tc = token_confidence(logits, token, inplace=True) if with_confidence else None
                if token in eos:
                    finish = "stop"
                    break
                out_ids.append(token)
                if tc is not None:
                    tracker.add(tc)
                emit = detok.push(out_ids)
                if params.stop:
                    stop_at = find_stop(text + emit, params.stop, len(text))
                    if stop_at is not None:
                        emit = (text + emit)[len(text) : stop_at]
                        finish = "stop"
                text += emit
                if lp is not None:
                    logprobs.append(lp)
                yield TokenEvent(index=index, token_id=token, text=emit, confidence=tc, logprob=lp)
                if finish == "stop":
                    break
                if stop_when is not None and tc is not None and stop_when(tracker):
                    finish = "low_confidence"
                    break
                if cancel is not None and cancel.cancelled:
                    finish = "cancelled"
                    break
                if index + 1 == params.max_tokens:
                    break
                self._decode_step(token, next_pos + (kv_len - len(prompt)), kv_len + 1)
                kv_len += 1
                hidden = self._step_hidden
            timings.generated_tokens = len(out_ids)
            timings.decode_s = time.perf_counter() - t_first if t_first else 0.0
            final_text = self.processor.decode(out_ids)
            if params.stop and finish == "stop":
                cut = find_stop(final_text, params.stop, 0)
                final_text = final_text[:cut] if cut is not None else final_text
            gen.result = GenerationResult(
                text=final_text,
                token_ids=out_ids,
                finish_reason=finish,
                confidence=tracker.summary(),
                tokens=list(tracker.tokens),
                timings=timings,
                last_hidden=hidden[0, -1].copy(),
                prefix=captured,
                image_features=encoded,
                scope=verdict,
                scope_inputs=inputs,
                logprobs=logprobs if params.logprobs is not None else None,
            )

    def _embed_ids(self, ids: np.ndarray) -> np.ndarray:
        """Input embeddings of token ids with no image features ``[len(ids), D]``."""
        out: np.ndarray = self.bundle.embedding.run(
            ["inputs_embeds"], {"input_ids": ids[None], "image_features": self._no_features}
        )[0][0]
        return out

    def _prefill(self, embeds: np.ndarray, position_ids: np.ndarray, total_len: int) -> np.ndarray:
        """Decoder run over the uncached prompt; logits land in ``self._logits``."""
        binding = self._binding
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=np.float32))
        binding.bind_cpu_input("attention_mask", self._mask[:, :total_len])
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        hidden = np.empty((1, embeds.shape[1], self.bundle.shape.hidden_size), dtype=np.float32)
        binding.bind_ortvalue_output("hidden_states", ort.OrtValue.ortvalue_from_numpy(hidden))
        self.bundle.decoder.run_with_iobinding(binding)
        # Decode steps reuse fixed buffers: bind them once here, not once per token.
        binding.bind_ortvalue_input("inputs_embeds", self._step_embeds_ov)
        binding.bind_ortvalue_input("position_ids", self._step_pos_ov)
        binding.bind_ortvalue_output("hidden_states", self._step_hidden_ov)
        return hidden

    def _decode_step(self, token: int, position: int, total_len: int) -> None:
        """Embed one token and run the decoder on it, all through pre-bound buffers."""
        self._step_token[0, 0] = token
        self.bundle.embedding.run_with_iobinding(self._emb_binding)
        self._step_pos.fill(position)
        self._binding.bind_cpu_input("attention_mask", self._mask[:, :total_len])
        self.bundle.decoder.run_with_iobinding(self._binding)


def edge_engine(bundle_dir: Path) -> Engine:
    """The ``edge`` engine (``fleetvl.engines`` entry point): a bundle on ONNX Runtime."""
    return EdgeEngine(bundle_dir)
