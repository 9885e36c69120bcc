"""The confidence gate: one number per answer, a threshold, and an early verdict while decoding.

A *signal* turns an answer's per-token confidences into one score in [0, 1] (higher: more
likely right). The gate releases an answer when its score clears a threshold, and — while the
answer is still being generated — can tell that no continuation could clear it any more
(:meth:`Gate.hopeless`), so the caller stops decoding and escalates instead of finishing an
answer it will discard.

Signals (all in [0, 1]):

* ``mean_prob``: geometric-mean token probability, ``exp(mean log-prob)``;
* ``min_prob``: the least probable emitted token;
* ``mean_margin`` / ``min_margin``: top-1 minus top-2 probability, averaged or minimum;
* ``p10_prob``: 10th percentile of token probabilities (no early verdict: not monotone);
* ``probe``: a logistic probe on the decoder's final hidden state (weights from the bundle's
  calibration); known only at the end, so no early verdict either.

Shared by the edge agent's gate and the cascade (edge vs cloud) work, hence in ``fleetvl``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fleetvl.errors import InputError
from fleetvl.vlm.confidence import TokenConfidence

__all__ = ["SIGNALS", "Gate", "GateVerdict", "Probe", "score"]

SIGNALS = ("mean_prob", "min_prob", "p10_prob", "mean_margin", "min_margin", "probe")


@dataclass(frozen=True)
class Probe:
    """``sigmoid(w . h + b)`` on the final-norm hidden state of the answer's last position."""

    weights: tuple[float, ...]
    bias: float

    def __call__(self, hidden: np.ndarray) -> float:
        h = np.asarray(hidden, dtype=np.float64).reshape(-1)
        if h.shape[0] != len(self.weights):
            raise InputError(
                f"probe expects a hidden state of {len(self.weights)} values, got {h.shape[0]}"
            )
        z = float(np.dot(h, np.asarray(self.weights))) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))


def score(
    signal: str,
    tokens: Sequence[TokenConfidence],
    hidden: np.ndarray | None = None,
    probe: Probe | None = None,
) -> float:
    """The signal's score of a finished answer. An empty answer scores 0 (nothing to trust).

    Raises:
        InputError: unknown signal, or ``probe`` without its weights or the hidden state.
    """
    if signal not in SIGNALS:
        raise InputError(f"unknown confidence signal {signal!r}; known: {', '.join(SIGNALS)}")
    if signal == "probe":
        if probe is None or hidden is None:
            raise InputError("the probe signal needs the calibration's probe and a hidden state")
        return probe(hidden)
    if not tokens:
        return 0.0
    if signal == "mean_prob":
        return math.exp(sum(t.logprob for t in tokens) / len(tokens))
    if signal == "min_prob":
        return min(t.prob for t in tokens)
    if signal == "p10_prob":
        return float(np.quantile([t.prob for t in tokens], 0.1))
    margins = [t.margin for t in tokens]
    return sum(margins) / len(margins) if signal == "mean_margin" else min(margins)


@dataclass(frozen=True)
class GateVerdict:
    """What the gate decided about a finished answer; reported with every answer."""

    signal: str
    value: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class Gate:
    """A signal and the threshold its score must reach (``>=``) for a local answer."""

    signal: str
    threshold: float
    probe: Probe | None = None

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise InputError(
                f"unknown confidence signal {self.signal!r}; known: {', '.join(SIGNALS)}"
            )
        if self.signal == "probe" and self.probe is None:
            raise InputError("signal 'probe' needs a calibration with probe weights")

    def verdict(
        self, tokens: Sequence[TokenConfidence], hidden: np.ndarray | None = None
    ) -> GateVerdict:
        value = score(self.signal, tokens, hidden, self.probe)
        return GateVerdict(self.signal, value, self.threshold, value >= self.threshold)

    def hopeless(self, tokens: Sequence[TokenConfidence], max_tokens: int) -> bool:
        """True when no answer continuing ``tokens`` (at most ``max_tokens`` in all) can pass.

        Exact bounds, not a forecast: the best continuation either ends now (EOS) or adds
        perfectly confident tokens up to ``max_tokens``; if neither clears the threshold,
        nothing can. Signals without a bound (``p10_prob``, ``probe``) never call it early.
        """
        watch = self.watch(max_tokens)
        return watch(tokens)

    def watch(self, max_tokens: int) -> Callable[[Sequence[TokenConfidence]], bool]:
        """An incremental :meth:`hopeless` for one generation: call it with the growing token
        list after every token (O(1) per call, for the decode loop)."""
        seen = 0
        total = 0.0
        low = math.inf
        signal, threshold = self.signal, self.threshold
        if signal not in ("min_prob", "min_margin", "mean_prob", "mean_margin"):
            return lambda _tokens: False

        def check(tokens: Sequence[TokenConfidence]) -> bool:
            nonlocal seen, total, low
            for t in tokens[seen:]:
                v = t.logprob if signal == "mean_prob" else (
                    t.prob if signal == "min_prob" else t.margin)  # fmt: skip
                total += v
                low = min(low, v)
            seen = n = len(tokens)
            if n == 0:
                return False
            if signal in ("min_prob", "min_margin"):
                return low < threshold
            extra = max(max_tokens - n, 0)
            if signal == "mean_prob":
                # Perfect tokens add log-prob 0: the mean rises towards 0 as they are added.
                return math.exp(max(total / n, total / (n + extra))) < threshold
            return max(total / n, (total + extra) / (n + extra)) < threshold

        return check
