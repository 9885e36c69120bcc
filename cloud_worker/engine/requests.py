"""What goes in and out of the cloud engine: its configuration, the events and result a
caller receives, and a request's running state inside the engine thread."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

from fleetvl.sampling import CancelToken, Sampler, SamplingParams
from fleetvl.vlm.confidence import AnswerConfidence, ConfidenceTracker, TokenConfidence
from fleetvl.vlm.detokenize import IncrementalDetokenizer
from fleetvl.vlm.processor import Prompt

__all__ = ["CloudResult", "EngineConfig", "StreamEvent"]


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


@dataclass(frozen=True)
class StreamEvent:
    index: int
    token_id: int
    text: str
    confidence: TokenConfidence | None


@dataclass
class CloudResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # stop | length | cancelled | deadline
    confidence: AnswerConfidence
    prompt_tokens: int
    ttft_s: float
    total_s: float
    queue_s: float
    decode_steps: int  # batched steps this request took part in
    vision_cache_hits: int = 0  # images whose encoder output came from the shared cache


@dataclass
class EngineRequest:
    id: int
    prompt: Prompt
    params: SamplingParams
    rank: int  # priority class: 0 critical, 1 standard, 2 batch
    deadline: float
    cancel: CancelToken
    out: queue.Queue
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
