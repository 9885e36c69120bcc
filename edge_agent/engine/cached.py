"""The edge engine behind the shared cache: responses, prefix KV blocks, vision embeddings.

Per request, in order:

1. a deterministic request whose answer is cached is answered from it (no compute at all);
2. the longest run of cached prefix KV blocks is sized (one round trip) and fetched only if
   the cost model says moving those bytes beats prefilling those tokens (and encoding the
   images inside them) on this machine;
3. images after the prefix are looked up in the vision-embedding cache, same rule;
4. the engine runs; afterwards new full blocks, new vision features and the answer are
   written by the cache's writer thread, off the request's path, and the measured prefill
   and vision times update the cost model.

Cache trouble of any kind degrades to the uncached path; what happened is reported in
``result.extra["cache"]`` and in the cache's Prometheus metrics.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal, TypedDict, Unpack

import numpy as np

from edge_agent.engine.engine import EdgeEngine, Generation
from edge_agent.engine.kv_arena import KVPrefix
from edge_agent.engine.types import (
    CancelToken,
    EarlyStop,
    GenerationResult,
    Timings,
    TokenEvent,
)
from fleetvl.cache import (
    CacheConfig,
    Decision,
    FleetCache,
    ImageSpan,
    KVShape,
    ModelCache,
    block_hashes,
    request_digest,
)
from fleetvl.cache.responses import StoredAnswer
from fleetvl.engines import Engine
from fleetvl.sampling import SamplingParams
from fleetvl.vlm.confidence import AnswerConfidence
from fleetvl.vlm.image import ImageInput
from fleetvl.vlm.processor import Prompt, QwenVLProcessor
from fleetvl.vlm.scope import ScopeModel

__all__ = ["CacheUse", "CachedEngine", "cached_edge_engine"]

# off: no cache; read: lookups only; read_write: lookups and stores (the default).
CacheUse = Literal["off", "read", "read_write"]


class PassedOn(TypedDict, total=False):
    """What :meth:`CachedEngine.stream` hands the edge engine unchanged."""

    stop_when: EarlyStop | None
    cancel: CancelToken | None
    confidence: bool
    scope: ScopeModel | None
    refuse_out_of_scope: bool


class CachedOptions(PassedOn, total=False):
    """The keyword arguments of :meth:`CachedEngine.stream`."""

    use: CacheUse


class CachedEngine:
    def __init__(
        self,
        engine: EdgeEngine,
        cache: FleetCache,
        tenant: str | None = None,
        use: CacheUse = "read_write",
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.use = use  # what stream() does unless told otherwise
        s = engine.bundle.shape
        self.model: ModelCache = cache.for_model(
            engine.digest,
            KVShape(s.num_layers, s.num_kv_heads, s.head_dim),
            s.hidden_size,
            tenant=tenant,
        )

    @property
    def processor(self) -> QwenVLProcessor:
        return self.engine.processor

    @property
    def digest(self) -> str:
        return self.engine.digest

    def encode(
        self, messages: Sequence[Mapping[str, object]], images: Sequence[ImageInput] = ()
    ) -> Prompt:
        return self.engine.encode(messages, images)

    def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, **kw: Unpack[CachedOptions]
    ) -> GenerationResult:
        gen = self.stream(prompt, params, **kw)
        for _ in gen:
            pass
        assert gen.result is not None
        return gen.result

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        stop_when: EarlyStop | None = None,
        cancel: CancelToken | None = None,
        confidence: bool = True,
        scope: ScopeModel | None = None,
        refuse_out_of_scope: bool = False,
        use: CacheUse | None = None,
    ) -> Generation:
        """:meth:`EdgeEngine.stream` with the cache's prefix KV, vision features and (for a
        caller without an early-stop predicate) whole answers; ``use`` as the policy says."""
        params = params or SamplingParams()
        kw: PassedOn = {"stop_when": stop_when, "cancel": cancel, "confidence": confidence,
                        "scope": scope, "refuse_out_of_scope": refuse_out_of_scope}  # fmt: skip
        return Generation(lambda gen: self._run(gen, prompt, params, use or self.use, kw))

    def using(self, use: CacheUse) -> CachedEngine:
        """This engine (the same weights, arena and cache) whose requests use the cache so."""
        view = copy.copy(self)
        view.use = use
        return view

    def request_digest(self, prompt: Prompt, params: SamplingParams) -> str | None:
        """Response-cache key, or None when the request is not deterministic."""
        if params.temperature > 0 and params.seed is None:
            return None
        ids = np.ascontiguousarray(prompt.input_ids, dtype="<i8")
        content = {
            "input_ids_sha256": _sha256(ids.tobytes()),
            "images": [i.digest for i in prompt.images],
        }
        return request_digest(self.engine.digest, content, _params_dict(params))

    def _run(
        self,
        gen: Generation,
        prompt: Prompt,
        params: SamplingParams,
        use: CacheUse,
        kw: PassedOn,
    ) -> Iterator[TokenEvent]:
        mc = self.model
        report: dict[str, object] = {"use": use}
        if use == "off":
            inner = self.engine.stream(prompt, params, **kw)
            yield from inner
            assert inner.result is not None
            inner.result.extra["cache"] = report
            gen.result = inner.result
            return

        # 1. The whole answer. Early-stopped or cancelled answers are never stored, and a
        # caller with an early-stop predicate needs the token confidences, so it skips this.
        rdigest = self.request_digest(prompt, params) if kw.get("stop_when") is None else None
        if rdigest is not None:
            cached = mc.responses.get(rdigest)
            if cached is not None:
                report["response"] = "hit"
                yield from self._replay(gen, prompt, cached, report)
                return
            report["response"] = "miss"

        # 2. Prefix KV: full blocks, leaving at least one prompt token to prefill.
        eng = self.engine
        spans = eng.image_spans(prompt)
        image_spans = [
            ImageSpan(s, e, img.digest) for (s, e), img in zip(spans, prompt.images, strict=True)
        ]
        B = mc.prefix.block
        all_hashes = block_hashes(mc.namespace.root_hash, prompt.input_ids, B, image_spans)
        usable = (len(prompt) - 1) // B
        prefix: KVPrefix | None = None
        plan = mc.prefix.plan(all_hashes[:usable]) if usable else None
        hit_blocks = 0
        if plan is not None:
            mc.cost.observe_rtt(plan.lookup_s)
        if plan is not None and plan.blocks:
            inside = sum(e - s for s, e in spans if e <= plan.tokens)
            d = mc.cost.decide("kv", plan.nbytes, plan.tokens, inside)
            report["kv_decision"] = _decision(d)
            if d.fetch:
                hit = mc.prefix.fetch(plan)
                if hit is not None:
                    mc.cost.observe_fetch(hit.nbytes, hit.fetch_s)
                    prefix = KVPrefix(hit.num_tokens, hit.keys, hit.values)
                    hit_blocks = hit.num_tokens // B
                    report["kv_fetch_s"] = hit.fetch_s
        cached_tokens = prefix.num_tokens if prefix else 0
        report["kv_hit_tokens"] = cached_tokens
        report["kv_stored_tokens"] = plan.tokens if plan else 0

        # 3. Vision features of images not covered by the prefix.
        features: dict[int, np.ndarray] = {}
        todo = [i for i, (s, e) in enumerate(spans) if e > cached_tokens]
        if todo:
            need = sum(spans[i][1] - spans[i][0] for i in todo)
            d = mc.cost.decide("vision", mc.vision.nbytes(need), 0, need)
            report["vision_decision"] = _decision(d)
            if d.fetch:
                got = (
                    mc.vision.get_many(
                        [(prompt.images[i].digest, spans[i][1] - spans[i][0]) for i in todo]
                    )
                    or {}
                )
                features = {todo[j]: f for j, f in got.items()}
        report["vision_hits"] = sorted(features)

        # 4. Run, then store what is new.
        full = len(prompt) // B
        capture = full * B if use == "read_write" and full > hit_blocks else None
        inner = eng.stream(
            prompt,
            params,
            prefix=prefix,
            capture_prefix=capture,
            image_features=features,
            **kw,
        )
        yield from inner
        res = inner.result
        assert res is not None
        t = res.timings
        if res.finish_reason != "out_of_scope":  # refused before prefill: nothing was timed
            mc.cost.observe_prefill(t.prompt_tokens - t.cached_tokens, t.prefill_s)
            mc.cost.observe_vision(t.vision_tokens, t.vision_s)
        if use == "read_write":
            known = max(hit_blocks, plan.blocks if plan else 0)
            if res.prefix is not None and full > known:
                mc.prefix.store_async(all_hashes[:full], res.prefix.keys, res.prefix.values, known)
            for i, f in res.image_features.items():
                mc.vision.put_async(prompt.images[i].digest, f)
            if rdigest is not None and res.finish_reason in ("stop", "length"):
                mc.responses.put_async(rdigest, _answer_dict(res))
        res.prefix = None  # the captured copy was for the cache only
        res.extra["cache"] = report
        gen.result = res

    def _replay(
        self, gen: Generation, prompt: Prompt, cached: StoredAnswer, report: dict[str, object]
    ) -> Iterator[TokenEvent]:
        ids = [int(i) for i in cached["token_ids"]]
        text_so_far = ""
        for index in range(len(ids)):
            text = self.processor.decode(ids[: index + 1])
            emit, text_so_far = text[len(text_so_far) :], text
            yield TokenEvent(index=index, token_id=ids[index], text=emit, confidence=None)
        conf = cached.get("confidence") or {}
        gen.result = GenerationResult(
            text=cached["text"],
            token_ids=ids,
            finish_reason=cached["finish_reason"],
            confidence=_confidence_from(conf, len(ids)),
            tokens=[],
            timings=Timings(
                prompt_tokens=len(prompt), cached_tokens=len(prompt), generated_tokens=len(ids)
            ),
            extra={"cache": report},
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _params_dict(p: SamplingParams) -> dict[str, object]:
    d = asdict(p)
    d["stop"] = list(p.stop)
    return d


def _decision(d: Decision) -> dict[str, object]:
    return {"choice": d.choice, "est_fetch_s": d.est_fetch_s, "est_recompute_s": d.est_recompute_s}


def _answer_dict(res: GenerationResult) -> StoredAnswer:
    return {
        "text": res.text,
        "token_ids": res.token_ids,
        "finish_reason": res.finish_reason,
        "confidence": res.confidence.as_dict(),
    }


def _confidence_from(d: Mapping[str, object], n: int) -> AnswerConfidence:
    """The stored summary; NaN for any field an older or foreign entry lacks."""
    names = [k for k in AnswerConfidence.__dataclass_fields__ if k != "num_tokens"]
    vals = {
        k: float(v) if isinstance(v := d.get(k), int | float) else float("nan") for k in names
    }
    return AnswerConfidence(num_tokens=n, **vals)


def cached_edge_engine(bundle_dir: Path) -> Engine:
    """The ``edge-cached`` engine (``fleetvl.engines`` entry point): the edge engine behind the
    shared Redis cache that ``FLEETVL_REDIS_URL`` names."""
    return CachedEngine(EdgeEngine(bundle_dir), FleetCache(CacheConfig.from_env()))
