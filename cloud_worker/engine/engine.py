"""Continuous batching for Qwen-VL: requests join and leave the running batch between steps.

One engine thread owns the model. Each iteration it admits waiting requests into free slots
(best priority class first, then earliest deadline), prefills them together (vision +
prompt), then runs one batched decode step for every running request, each with its own
MRoPE offset and KV length. Tokens stream to callers as they are produced; a cancelled,
stopped or expired request leaves its slot free for the next step.

A model directory with an out-of-scope score (``calibration.json`` + ``scope.npz``, see
:mod:`cloud_worker.engine.scope`) has every admitted request with images scored right after
its prefill: one the score calls out of scope finishes at once with
``finish_reason="out_of_scope"`` and no tokens, and never takes a decode slot. The cloud
refuses by its own score whatever the policy's ``on_out_of_scope`` says: a request escalated
for being out of the edge model's scope comes here to be judged by the larger model.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

import numpy as np
import torch

from cloud_worker.engine.admission import DeadlineAdmission
from cloud_worker.engine.decode_step import DecodeStep
from cloud_worker.engine.model import (
    LoadedModel,
    PrefillResult,
    TenantVisionCaches,
    load_model,
    model_digest,
    prefill_cached,
)
from cloud_worker.engine.pipeline import DecodePipeline, LaunchedStep, row_stats, token_confidence
from cloud_worker.engine.requests import (
    CloudResult,
    CloudStream,
    EngineConfig,
    EngineRequest,
    SubmitOptions,
)
from cloud_worker.engine.scope import check_scorable, load_model_scope, score_scope
from cloud_worker.engine.slot_cache import SlotCache
from fleetvl.engines import Engine, TokenEvent
from fleetvl.errors import PromptError
from fleetvl.sampling import CancelToken, Sampler, SamplingParams
from fleetvl.vlm.confidence import TokenConfidence, token_logprob
from fleetvl.vlm.detokenize import IncrementalDetokenizer, find_stop
from fleetvl.vlm.image import ImageInput, prepare_image
from fleetvl.vlm.processor import Prompt, QwenVLProcessor

if TYPE_CHECKING:
    from fleetvl.cache import FleetCache

__all__ = [
    "CloudEngine",
    "CloudResult",
    "CloudStream",
    "EngineConfig",
    "cloud_engine",
    "model_digest",
]

log = logging.getLogger("fleetvl.cloud")


class CloudEngine:
    def __init__(
        self,
        model_dir: str | Path,
        config: EngineConfig | None = None,
        cache: FleetCache | None = None,
        scope: bool = True,
    ) -> None:
        """Load ``model_dir`` and start the engine thread.

        Args:
            cache: a :class:`fleetvl.cache.FleetCache` for vision embeddings (optional).
            scope: load the directory's out-of-scope score (False: refuse nothing, e.g.
                while fitting a new one).

        Raises:
            InputError: the directory's calibration or scope model is broken, or was fitted
                for another model (a directory without one has ``scope`` None).
        """
        self.config = cfg = config or EngineConfig()
        self.processor = QwenVLProcessor(model_dir, max_prompt_tokens=cfg.max_context - 1)
        # Before the weights: a broken one fails fast.
        self.scope = load_model_scope(model_dir) if scope else None
        self.lm: LoadedModel = load_model(
            model_dir, cfg.device, cfg.dtype, vision_attention=cfg.vision_attention
        )
        lm = self.lm
        self.cache = SlotCache(
            lm.num_layers, cfg.max_slots, lm.kv_heads, lm.head_dim, cfg.max_context,
            lm.dtype, lm.device,
        )  # fmt: skip
        self.step = DecodeStep(lm, self.cache, cfg.cuda_graphs, cfg.span_bucket,
                               compile_step=cfg.compile_step, impl=cfg.decode_impl)  # fmt: skip
        self.eos = set(self.processor.eos_token_ids)
        self.digest = model_digest(model_dir)
        self.vision = TenantVisionCaches(cache, self.digest, lm) if cache is not None else None
        self._waiting: list[tuple[int, float, int, EngineRequest]] = []
        self._slots: list[EngineRequest | None] = [None] * cfg.max_slots
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._stop = False
        self.pipeline = DecodePipeline(self.step)
        self._pending: LaunchedStep | None = None
        self.decode_steps = 0
        # Where the engine thread's time goes (seconds, cumulative): prefill, launching
        # steps, waiting for the device, the host's per-token work, the out-of-scope score;
        # and counts: requests prefilled, decode steps slipped into prefills, refusals.
        self.timings = dict.fromkeys(
            ("prefill_s", "prefill_requests", "interleaved_steps", "launch_s", "wait_s", "host_s",
             "scope_s", "out_of_scope"),
            0.0,
        )  # fmt: skip
        self.admission = DeadlineAdmission()
        self.step.warmup()
        self._thread = threading.Thread(target=self._loop, name="cloud-engine", daemon=True)
        self._thread.start()

    # -- API ------------------------------------------------------------------------------

    def encode(
        self, messages: Sequence[Mapping[str, object]], images: Sequence[ImageInput] = ()
    ) -> Prompt:
        cfg = self.processor.image_config
        return self.processor.encode(messages, [prepare_image(i, cfg) for i in images])

    def submit(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        rank: int = 1,
        deadline: float | None = None,
        cancel: CancelToken | None = None,
        tenant: str | None = None,
        cache: str = "read_write",
    ) -> Iterator[TokenEvent | CloudResult]:
        """Queue a request; iterate for its events, the :class:`CloudResult` last. Slots go
        by (``rank`` 0 critical/1/2 batch, ``deadline``) to requests that can still make it
        (:mod:`.admission`); ``tenant`` namespaces its vision cache; ``cache`` is its policy's
        mode (off | read: reuse, store nothing | read_write).

        Raises:
            PromptError: the prompt and ``max_tokens`` do not fit the context.
            InputError: the engine scores inputs and an image has no thumbnail.
        """
        params = params or SamplingParams()
        if len(prompt) + params.max_tokens > self.config.max_context:
            raise PromptError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"engine's context of {self.config.max_context} tokens"
            )
        if self.scope is not None:
            check_scorable(prompt)
        req = EngineRequest(
            id=next(self._ids), prompt=prompt, params=params, rank=rank,
            deadline=deadline if deadline is not None else float("inf"),
            cancel=cancel or CancelToken(), out=queue.Queue(),
            vision_cache=self.vision.get(tenant) if self.vision and cache != "off" else None,
            store_vision=cache == "read_write",
        )  # fmt: skip
        with self._lock:
            heapq.heappush(self._waiting, (rank, req.deadline, req.id, req))
            self._lock.notify()
        return req.events()

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        cancel: CancelToken | None = None,
        rank: int = 1,
        deadline: float | None = None,
    ) -> CloudStream:
        """:meth:`submit` as the :class:`fleetvl.engines.Engine` protocol has it: iterate for
        tokens; ``result`` is set once they end."""
        return CloudStream(self.submit(prompt, params, rank=rank, deadline=deadline, cancel=cancel))

    def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, **kw: Unpack[SubmitOptions]
    ) -> CloudResult:
        result = None
        for ev in self.submit(prompt, params, **kw):
            if isinstance(ev, CloudResult):
                result = ev
        assert result is not None
        return result

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(30)

    @property
    def running(self) -> int:
        return sum(r is not None for r in self._slots)

    # -- engine thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._waiting and self.running == 0:
                    self._lock.wait()
                if self._stop:
                    return
                admit: list[tuple[int, EngineRequest]] = []
                free = [i for i, r in enumerate(self._slots) if r is None]
                while self._waiting and free and len(admit) < self.config.prefills_per_step:
                    _, _, _, req = heapq.heappop(self._waiting)
                    admit.append((free.pop(0), req))
            try:
                if admit:
                    self._drain()  # host state current before slots change hands
                    t0 = time.perf_counter()
                    self._admit(admit)
                    self.timings["prefill_s"] += time.perf_counter() - t0
                    self.timings["prefill_requests"] += len(admit)
                self._decode()
            except Exception as exc:  # fail the running requests, keep the engine
                log.exception("decode step failed")
                self._pending = None
                for i, r in enumerate(self._slots):
                    if r is not None:
                        r.out.put(exc)
                        self._slots[i] = None

    def _admit(self, batch: list[tuple[int, EngineRequest]]) -> None:
        now = time.monotonic()
        live = []
        for slot, req in batch:
            req.started = now
            if req.cancel.cancelled:
                self._finish(req, "cancelled")
            elif not self.admission.admits(req, now):  # see .admission
                self._finish(req, "deadline")
            else:
                live.append((slot, req))
        if not live:
            return
        try:
            results = prefill_cached(self.lm, [req for _, req in live], self._decode_between_layers,
                                     self.processor.special_token_ids)  # fmt: skip
        except Exception as exc:
            log.exception("prefill failed")
            for _, req in live:
                req.out.put(exc)
            return
        kept: list[tuple[EngineRequest, PrefillResult]] = []
        for (slot, req), pre in zip(live, results, strict=True):
            refused = score_scope(self.scope, req, self.timings)
            if refused == "out_of_scope":
                self._finish(req, "out_of_scope")
            if refused:
                continue
            kept.append((req, pre))
            self.cache.load(slot, pre.keys, pre.values)
            req.slot = slot
            req.kv_len = len(req.prompt)
            req.next_pos = pre.next_position
            req.sampler = Sampler(req.params)
            req.detok = IncrementalDetokenizer(self.processor.decode)
            self._slots[slot] = req
        if kept:
            self._emit([r for r, _ in kept], torch.stack([pre.logits for _, pre in kept]))

    def _decode(self) -> None:
        """Launch one step for every running request that still needs one, then process the
        previous step's results while this one runs (see :mod:`.pipeline`)."""
        rows = [(i, r) for i, r in enumerate(self._slots)
                if r is not None and r.launched < r.params.max_tokens - 1]  # fmt: skip
        if not rows:
            self._drain()
            return
        sampled = [i for i, r in rows if r.needs_row]
        if sampled:
            self._drain()  # the host's choices are the next inputs
            rows = [(i, r) for i, r in rows if self._slots[i] is r]
            if not rows:
                return
            for i, r in rows:
                self.pipeline.set_slot(i, r.tokens[-1], r.next_pos + r.kv_len - len(r.prompt),
                                       r.kv_len)  # fmt: skip
        active = [False] * self.cache.slots
        for i, _ in rows:
            active[i] = True
        self.pipeline.set_active(active)
        longest = max(r.kv_len for _, r in rows) + 1
        t0 = time.perf_counter()
        launched = self.pipeline.launch(self.step.span_for(longest), rows, sampled)
        self.timings["launch_s"] += time.perf_counter() - t0
        self.decode_steps += 1
        for _, r in rows:
            r.kv_len += 1
            r.launched += 1
        previous, self._pending = self._pending, launched
        if previous is not None:
            self._process(previous)
        if sampled:
            self._drain()

    def _decode_between_layers(self) -> None:
        """During a prefill: launch the running requests' next step once the device has
        finished the previous one (so a device busy with the prefill is never handed more),
        and stream that previous step's tokens. Sampled requests would need a host round trip
        per step; they wait for the prefill to end."""
        pending = self._pending
        if pending is not None and pending.event is not None and not pending.event.query():  # type: ignore[no-untyped-call]
            return
        if any(r is not None and r.needs_row for r in self._slots):
            return
        self.timings["interleaved_steps"] += 1
        self._decode()

    def _drain(self) -> None:
        """Process the step in flight, if any: afterwards host state is current."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._process(pending)

    def _process(self, launched: LaunchedStep) -> None:
        t0 = time.perf_counter()
        stats = self.pipeline.results(launched)
        t1 = time.perf_counter()
        for slot, launched_req in launched.rows:
            r: EngineRequest | None = self._slots[slot]
            if r is None or r is not launched_req:
                continue  # finished at an earlier step: this row was wasted work
            r.steps += 1
            row = launched.sampled.get(slot)
            if row is not None:
                token, lp = r.sample(row)
            else:
                token, lp = int(stats[slot, 0]), float(stats[slot, 1])
            self._advance(r, token, token_confidence(token, lp, stats[slot]), row)
        self.timings["wait_s"] += t1 - t0
        self.timings["host_s"] += time.perf_counter() - t1

    def _emit(self, reqs: list[EngineRequest], logits: torch.Tensor) -> None:
        """Choose, score and stream the first token of newly prefilled requests.

        Greedy choices and every row's confidence come back in one small transfer: a
        per-request ``.item()`` would stall the device once per request.
        """
        stats = row_stats(logits)[0].cpu().numpy()  # [rows, 4]: argmax, top1, top2, entropy
        for j, r in enumerate(reqs):
            row = logits[j].float().cpu().numpy() if r.needs_row else None
            if row is not None:
                token, lp = r.sample(row)
            else:
                token, lp = int(stats[j, 0]), float(stats[j, 1])
            self._advance(r, token, token_confidence(token, lp, stats[j]), row)
            if self._slots[r.slot] is r:  # still running: its inputs for the next step
                self.pipeline.set_slot(r.slot, token, r.next_pos, r.kv_len)

    def _advance(
        self, r: EngineRequest, token: int, conf: TokenConfidence, row: np.ndarray | None = None
    ) -> None:
        lp = None
        if r.params.logprobs is not None and row is not None:
            lp = token_logprob(row, token, r.params.logprobs, self.processor.decode)
        finish = r.advance(token, conf, self.eos, lp)
        if finish is not None:
            self._finish(r, finish)

    def _finish(self, r: EngineRequest, reason: str) -> None:
        if reason in ("stop", "length"):
            self.admission.learn(r)
        if 0 <= r.slot < len(self._slots) and self._slots[r.slot] is r:
            self._slots[r.slot] = None
        text = self.processor.decode(r.tokens)
        if r.params.stop and reason == "stop":
            cut = find_stop(text, r.params.stop, 0)
            text = text[:cut] if cut is not None else text
        r.out.put(r.result(text, reason))


def cloud_engine(model_dir: Path) -> Engine:
    """The ``cloud`` engine (``fleetvl.engines`` entry point): the full model on PyTorch."""
    return CloudEngine(model_dir)
