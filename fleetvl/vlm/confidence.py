"""Confidence signals from next-token logits, per token and aggregated per answer.

Shared by the edge engine and the cloud worker so both report the same numbers. Per token:
probability of the chosen token, top-1 probability, top-1/top-2 margin and entropy (nats).
Per answer: mean log-prob, min prob, quantiles, mean entropy and margin. Which signal the gate
uses is decided by measurement (issue: cascade benchmark), not here.

The per-token pass reads the logits three times (max, exp-sum, dot) and allocates one
temporary: ~0.3 ms for a 152k vocabulary, small next to a decode step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "AnswerConfidence",
    "ConfidenceTracker",
    "TokenConfidence",
    "TokenLogprob",
    "token_confidence",
    "token_logprob",
    "top_logprobs",
]


@dataclass(frozen=True)
class TokenConfidence:
    """Signals of one generated token."""

    token_id: int
    prob: float  # probability of the emitted token
    logprob: float
    top1_prob: float
    margin: float  # p(top1) - p(top2)
    entropy: float  # nats


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability under the model's distribution (before temperature,
    top-k or top-p), and the most likely tokens at its position: OpenAI's ``logprobs``."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # (token, logprob), most likely first


def top_logprobs(
    logits: np.ndarray, token_id: int, k: int
) -> tuple[float, list[tuple[int, float]]]:
    """``token_id``'s log-probability under ``softmax(logits)`` (1-D) and the ``k`` most
    likely token ids with theirs, most likely first."""
    x = logits.astype(np.float32, copy=False)
    m = float(x.max())
    log_z = m + float(np.log(np.exp(x - m).sum()))
    top: list[tuple[int, float]] = []
    if k > 0:
        k = min(k, x.shape[0])
        ids = np.argpartition(x, -k)[-k:]
        ids = ids[np.argsort(-x[ids], kind="stable")]
        top = [(int(i), float(x[i]) - log_z) for i in ids]
    return float(x[token_id]) - log_z, top


def token_logprob(
    logits: np.ndarray, token_id: int, k: int, decode: Callable[[list[int]], str]
) -> TokenLogprob:
    """OpenAI's log-probabilities of ``token_id`` and its ``k`` best alternatives, their
    texts by ``decode`` (a processor's)."""
    lp, top = top_logprobs(logits, token_id, k)
    return TokenLogprob(decode([token_id]), lp, tuple((decode([i]), v) for i, v in top))


def token_confidence(
    logits: np.ndarray, token_id: int, *, inplace: bool = False
) -> TokenConfidence:
    """Signals for ``token_id`` under the distribution ``softmax(logits)`` (1-D logits).

    ``inplace=True`` lets the function mask and restore one element of ``logits`` instead of
    copying the vocabulary-sized array (the engine owns its logits buffer); values are
    unchanged on return.
    """
    x = logits.astype(np.float32, copy=False)
    top1 = int(np.argmax(x))
    m = float(x[top1])
    e = np.exp(x - m)
    z = float(e.sum())
    log_z = m + float(np.log(z))
    entropy = log_z - float(np.dot(e, x)) / z
    saved = x[top1]
    # Second best without a sort: mask the best in place for one max, then restore.
    x_mut = x if (inplace or x is not logits) else x.copy()
    x_mut[top1] = -np.inf
    second = float(x_mut.max())
    x_mut[top1] = saved
    p1 = 1.0 / z  # exp(m - m) / z
    p2 = float(np.exp(second - m)) / z if np.isfinite(second) else 0.0
    lp = float(x[token_id]) - log_z
    return TokenConfidence(
        token_id=int(token_id),
        prob=float(np.exp(lp)),
        logprob=lp,
        top1_prob=p1,
        margin=p1 - p2,
        entropy=max(entropy, 0.0),
    )


@dataclass
class AnswerConfidence:
    """Aggregates over an answer's tokens; the gate reads one of these fields."""

    num_tokens: int
    mean_logprob: float
    min_prob: float
    p10_prob: float
    p50_prob: float
    mean_entropy: float
    max_entropy: float
    mean_margin: float
    min_margin: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ConfidenceTracker:
    """Running per-answer statistics, updated once per token (O(1) summaries kept current)."""

    tokens: list[TokenConfidence] = field(default_factory=list)
    _sum_logprob: float = 0.0
    _min_prob: float = 1.0

    def add(self, tc: TokenConfidence) -> None:
        self.tokens.append(tc)
        self._sum_logprob += tc.logprob
        self._min_prob = min(self._min_prob, tc.prob)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def mean_logprob(self) -> float:
        return self._sum_logprob / len(self.tokens) if self.tokens else 0.0

    @property
    def min_prob(self) -> float:
        return self._min_prob

    def summary(self) -> AnswerConfidence:
        if not self.tokens:
            return AnswerConfidence(0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0)
        probs = np.array([t.prob for t in self.tokens])
        ent = np.array([t.entropy for t in self.tokens])
        margin = np.array([t.margin for t in self.tokens])
        return AnswerConfidence(
            num_tokens=len(self.tokens),
            mean_logprob=self.mean_logprob,
            min_prob=float(probs.min()),
            p10_prob=float(np.quantile(probs, 0.1)),
            p50_prob=float(np.quantile(probs, 0.5)),
            mean_entropy=float(ent.mean()),
            max_entropy=float(ent.max()),
            mean_margin=float(margin.mean()),
            min_margin=float(margin.min()),
        )
