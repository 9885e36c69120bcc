"""What every engine (edge or cloud) takes: sampling parameters, the next-token choice
(greedy, temperature, top-k, top-p), and a cancellation token."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from fleetvl.errors import InputError

__all__ = ["MAX_TOP_LOGPROBS", "CancelToken", "SamplingParams", "Sampler"]

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on ``top_logprobs``


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature == 0`` is greedy decoding. ``seed`` makes sampling reproducible.
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    # Log-probabilities of the chosen tokens, with this many most likely alternatives per
    # position (0-20, OpenAI's ``top_logprobs``); None: none are computed.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InputError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 10.0:
            raise InputError(f"temperature must be in [0, 10], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise InputError("stop sequences must be non-empty strings")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InputError(
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}"
            )


class Sampler:
    """Chooses the next token from 1-D logits; one instance per generation (owns its RNG)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / p.temperature
        if p.top_k and p.top_k < x.shape[0]:
            kth = np.partition(x, -p.top_k)[-p.top_k]
            x = np.where(x < kth, -np.inf, x)
        x -= x.max()
        probs = np.exp(x)
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            keep = order[: int(np.searchsorted(cum, p.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(probs.shape[0], p=probs))


class CancelToken:
    """Set from any thread; the engine checks it between decode steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
