"""What goes in and out of the cloud engine: its configuration, the events and result a
caller receives, and a request's running state inside the engine thread."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from fleetvl.engines import TokenEvent
from fleetvl.sampling import CancelToken, Sampler, SamplingParams
from fleetvl.vlm.confidence import (
    AnswerConfidence,
    ConfidenceTracker,
    TokenConfidence,
    TokenLogprob,
)
from fleetvl.vlm.detokenize import IncrementalDetokenizer, find_stop
from fleetvl.vlm.processor import Prompt
from fleetvl.vlm.scope import ScopeInputs, ScopeScore

if TYPE_CHECKING:
    from fleetvl.cache.vision import VisionCache

__all__ = ["CloudResult", "CloudStream", "EngineConfig", "SubmitOptions"]


@dataclass(frozen=True)
class EngineConfig:
    max_slots: int = 8  # requests decoded together
    max_context: int = 4096  # per slot: prompt + answer
    device: str = "auto"
    dtype: str | None = None  # default: bfloat16 on CUDA, float32 on CPU
    cuda_graphs: bool = True
    compile_step: bool = True  # torch.compile the decode step (CUDA only)
    span_bucket: int = 256  # attended span rounding: one compiled graph per bucket
    # New requests admitted (and prefilled together, in one batch) between two decode steps:
    # more raises throughput, fewer keeps the running requests' inter-token gaps short.
    prefills_per_step: int = 8
    decode_impl: str = "fused"  # fused | transformers (reference): see decode_step.py
    vision_attention: str = "varlen"  # varlen | transformers (one SDPA call per window)


@dataclass
class CloudResult:
    text: str
    token_ids: list[int]
    # stop | length | cancelled | deadline | out_of_scope (refused: no tokens, see ``scope``)
    finish_reason: str
    confidence: AnswerConfidence
    prompt_tokens: int
    ttft_s: float
    total_s: float
    queue_s: float
    decode_steps: int  # batched steps this request took part in
    vision_cache_hits: int = 0  # images whose encoder output came from the shared cache
    # The out-of-scope verdict (fleetvl.vlm.scope): None when the engine has no scope model
    # or the request has no images. What it was computed from is kept either way.
    scope: ScopeScore | None = None
    scope_inputs: list[ScopeInputs] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # each token's, when asked for


@dataclass
class EngineRequest:
    id: int
    prompt: Prompt
    params: SamplingParams
    rank: int  # priority class: 0 critical, 1 standard, 2 batch
    deadline: float
    cancel: CancelToken
    out: queue.Queue[TokenEvent | CloudResult | BaseException]
    arrival: float = field(default_factory=time.monotonic)
    # Running state
    slot: int = -1
    kv_len: int = 0
    next_pos: int = 0
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sampler: Sampler | None = None
    tracker: ConfidenceTracker = field(default_factory=ConfidenceTracker)
    detok: IncrementalDetokenizer | None = None
    started: float = 0.0
    first: float = 0.0
    steps: int = 0  # decode steps whose token this request used
    launched: int = 0  # decode steps launched for it (one more than used, at most)
    vision_hits: int = 0
    vision_cache: VisionCache | None = None  # its tenant's, unless its policy says "off"
    store_vision: bool = True  # False: the policy's cache mode is "read"
    scope: ScopeScore | None = None
    scope_inputs: list[ScopeInputs] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def events(self) -> Iterator[TokenEvent | CloudResult]:
        """Its events as the engine thread puts them, the result last (a caller that stops
        iterating cancels it: the slot frees)."""
        try:
            while True:
                ev = self.out.get()
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
                if isinstance(ev, CloudResult):
                    return
        finally:
            self.cancel.cancel()  # a caller that stops iterating frees the slot

    @property
    def needs_row(self) -> bool:
        """Its next token needs the host's copy of its logits: it samples, or it asked for
        log-probabilities (a host round trip per step; greedy rows stay on the device)."""
        return self.params.temperature > 0 or self.params.logprobs is not None

    def sample(self, row: np.ndarray) -> tuple[int, float]:
        """A sampled token from a row of logits, and its log-probability."""
        assert self.sampler is not None
        token = self.sampler(row)
        row64 = row.astype(np.float64)
        return token, float(row64[token] - np.logaddexp.reduce(row64))

    def advance(
        self, token: int, conf: TokenConfidence, eos: set[int], lp: TokenLogprob | None = None
    ) -> str | None:
        """Take the next token: stream its text (stop sequences cut it) and return why the
        request ends now (stop, length, cancelled, deadline), or None to go on."""
        p = self.params
        if not self.tokens:
            self.first = time.monotonic()
        if token in eos and not p.ignore_eos:
            return "stop"
        self.tokens.append(token)
        self.tracker.add(conf)
        assert self.detok is not None
        emit = self.detok.push(self.tokens)
        finish = None
        if p.stop:
            at = find_stop(self.text + emit, p.stop, len(self.text))
            if at is not None:
                emit = (self.text + emit)[len(self.text) : at]
                finish = "stop"
        self.text += emit
        if lp is not None:
            self.logprobs.append(lp)
        self.out.put(TokenEvent(len(self.tokens) - 1, token, emit, conf, lp))
        if finish is None:
            if len(self.tokens) >= p.max_tokens:
                finish = "length"
            elif self.cancel.cancelled:
                finish = "cancelled"
            elif time.monotonic() > self.deadline:
                finish = "deadline"
        return finish

    def result(self, text: str, reason: str) -> CloudResult:
        """The request's :class:`CloudResult` as of now (``text``: its final answer)."""
        now = time.monotonic()
        return CloudResult(
            text=text,
            token_ids=list(self.tokens),
            finish_reason=reason,
            confidence=self.tracker.summary(),
            prompt_tokens=len(self.prompt),
            ttft_s=(self.first - self.arrival) if self.first else 0.0,
            total_s=now - self.arrival,
            queue_s=(self.started - self.arrival) if self.started else now - self.arrival,
            decode_steps=self.steps,
            vision_cache_hits=self.vision_hits,
            scope=self.scope,
            scope_inputs=self.scope_inputs,
            logprobs=list(self.logprobs) if self.params.logprobs is not None else None,
        )


class SubmitOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`CloudEngine.submit`."""

    rank: int
    deadline: float | None
    cancel: CancelToken | None
    tenant: str | None
    cache: str


class CloudStream:
    """A submitted request's tokens, its :class:`CloudResult` kept aside in ``result``."""

    def __init__(self, events: Iterator[TokenEvent | CloudResult]) -> None:
        self.result: CloudResult | None = None
        self._events = events

    def __iter__(self) -> Iterator[TokenEvent]:
        for ev in self._events:
            if isinstance(ev, CloudResult):
                self.result = ev
            else:
                yield ev
