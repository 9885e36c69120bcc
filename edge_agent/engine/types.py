"""What the engine takes and gives back."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from edge_agent.engine.kv_arena import KVPrefix
from fleetvl.engines import TokenEvent
from fleetvl.sampling import CancelToken
from fleetvl.vlm.confidence import (
    AnswerConfidence,
    ConfidenceTracker,
    TokenConfidence,
    TokenLogprob,
)
from fleetvl.vlm.scope import ScopeInputs, ScopeModel, ScopeScore

__all__ = [
    "CancelToken",
    "EarlyStop",
    "Generation",
    "GenerationResult",
    "StreamOptions",
    "Timings",
    "TokenEvent",
]

# Called after every token with the running confidence; True stops decoding ("low_confidence").
EarlyStop = Callable[[ConfidenceTracker], bool]


@dataclass
class Timings:
    vision_s: float = 0.0
    prefill_s: float = 0.0  # embedding + decoder over the prompt (vision excluded)
    ttft_s: float = 0.0  # request start to first token chosen, vision included
    scope_s: float = 0.0  # the out-of-scope score, its preprocessing part included
    decode_s: float = 0.0  # after the first token, to the last
    prompt_tokens: int = 0
    cached_tokens: int = 0
    vision_tokens: int = 0  # image tokens the vision encoder computed (cache hits excluded)
    generated_tokens: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    # "stop" (EOS or stop sequence), "length", "low_confidence" (early stop), "cancelled",
    # "out_of_scope" (refused before prefill)
    finish_reason: str
    confidence: AnswerConfidence
    tokens: list[TokenConfidence]
    timings: Timings
    last_hidden: np.ndarray | None = None  # final-norm hidden state of the last position
    prefix: KVPrefix | None = None  # KV captured after prefill, when asked for
    # Vision features computed by this request, by image index (for the cache to store).
    image_features: dict[int, np.ndarray] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    # The out-of-scope verdict when the caller passed a scope model (fleetvl.vlm.scope), and
    # what it read (kept for calibration even without a model; empty without images).
    scope: ScopeScore | None = None
    scope_inputs: list[ScopeInputs] = field(default_factory=list)
    # Each generated token's log-probabilities, when ``SamplingParams.logprobs`` asked for them.
    logprobs: list[TokenLogprob] | None = None

    # What fleetvl.engines.EngineResult reads, which the cloud's result keeps at top level.
    @property
    def prompt_tokens(self) -> int:
        return self.timings.prompt_tokens

    @property
    def ttft_s(self) -> float:
        return self.timings.ttft_s


class Generation:
    """An in-progress generation: iterate for :class:`TokenEvent`; ``result`` when done."""

    def __init__(self, run: Callable[[Generation], Iterator[TokenEvent]]) -> None:
        self.result: GenerationResult | None = None
        # The run writes ``result`` into this object when it finishes.
        self._events = run(self)

    def __iter__(self) -> Iterator[TokenEvent]:
        return self._events


class StreamOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`EdgeEngine.stream`."""

    prefix: KVPrefix | None
    capture_prefix: int | None
    stop_when: EarlyStop | None
    cancel: CancelToken | None
    confidence: bool
    image_features: Mapping[int, np.ndarray] | None
    scope: ScopeModel | None
    refuse_out_of_scope: bool
