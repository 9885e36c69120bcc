"""Candidate gate signals, their AUROC, and a hidden-state probe (NumPy only).

A gate signal scores an answer so that higher means "more likely correct". The token
signals come from :class:`fleetvl.vlm.confidence.AnswerConfidence`; the probe is a logistic
regression on the decoder's final hidden state (what the edge engine returns as
``last_hidden``), trained on a labelled split. Which one the gate uses is decided by
``benchmarks/cascade.py``, per bundle precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from fleetvl.vlm.gate import Probe

__all__ = ["TOKEN_SIGNALS", "HiddenProbe", "HiddenProbeDict", "auroc", "token_signal"]


class HiddenProbeDict(TypedDict):
    """The JSON form of a :class:`HiddenProbe`."""

    mean: list[float]
    std: list[float]
    weight: list[float]
    bias: float

# name -> score from an AnswerConfidence dict; entropies are negated so higher = surer.
TOKEN_SIGNALS: dict[str, Callable[[Mapping[str, float]], float]] = {
    "mean_logprob": lambda c: c["mean_logprob"],
    "min_prob": lambda c: c["min_prob"],
    "p10_prob": lambda c: c["p10_prob"],
    "p50_prob": lambda c: c["p50_prob"],
    "neg_mean_entropy": lambda c: -c["mean_entropy"],
    "neg_max_entropy": lambda c: -c["max_entropy"],
    "mean_margin": lambda c: c["mean_margin"],
    "min_margin": lambda c: c["min_margin"],
}


def token_signal(name: str, confidence: Mapping[str, float]) -> float:
    """Score of one answer under token signal ``name``.

    An empty answer (the model ended at once) scores -inf: nothing supports trusting it.
    """
    if confidence.get("num_tokens", 1) == 0:
        return float("-inf")
    try:
        return float(TOKEN_SIGNALS[name](confidence))
    except KeyError:
        raise ValueError(
            f"unknown signal {name!r}; choose one of {sorted(TOKEN_SIGNALS)}"
        ) from None


def auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating correct (1) from wrong (0) answers.

    Mann-Whitney form with average ranks for ties; NaN when one class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(correct, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class HiddenProbe:
    """Logistic regression P(correct | features), features standardized with train stats.

    Small and closed-form to serve: one dot product per answer. ``to_dict`` / ``from_dict``
    keep it in JSON next to a bundle's calibration.
    """

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float

    @classmethod
    def fit(
        cls, x: np.ndarray, correct: np.ndarray, l2: float = 1.0, steps: int = 50
    ) -> HiddenProbe:
        """Fit by Newton's method (IRLS) with an L2 penalty ``l2`` on the weights."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(correct, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
            raise ValueError(f"need [n, d] features and n labels, got {x.shape} and {y.shape}")
        mean = x.mean(0)
        std = x.std(0) + 1e-6
        z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
        w = np.zeros(z.shape[1])
        reg = np.full(z.shape[1], l2)
        reg[-1] = 1e-6  # the bias is not shrunk
        for _ in range(steps):
            p = 1 / (1 + np.exp(-np.clip(z @ w, -30, 30)))
            grad = z.T @ (p - y) + reg * w
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
            delta = np.linalg.solve(hess, grad)
            w -= delta
            if np.abs(delta).max() < 1e-8:
                break
        return cls(mean=mean, std=std, weight=w[:-1], bias=float(w[-1]))

    @classmethod
    def out_of_fold(
        cls, x: np.ndarray, correct: np.ndarray, folds: int = 5, l2: float = 1.0
    ) -> np.ndarray:
        """Each example's score from a probe fit without it (``folds``-fold, interleaved).

        A probe scored on its own training set looks better than it is (it can memorize a
        few hundred examples in a few hundred dimensions), so thresholds and AUROC are read
        from these scores; the probe that serves is then fit on every example.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(correct, dtype=bool)
        out = np.zeros(len(y))
        idx = np.arange(len(y))
        for k in range(min(folds, len(y))):
            held = idx % folds == k
            train = ~held
            if y[train].all() or not y[train].any():
                out[held] = float(y[train].mean())  # one class only: no ranking to learn
                continue
            out[held] = cls.fit(x[train], y[train], l2=l2).predict(x[held])
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(correct) for each row of ``x``."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        p: np.ndarray = 1 / (1 + np.exp(-np.clip(z @ self.weight + self.bias, -30, 30)))
        return p

    def to_gate_probe(self) -> Probe:
        """The same function as the serving gate's :class:`~fleetvl.vlm.gate.Probe` (the
        standardization folded into the weights), for a bundle's calibration."""
        w = self.weight / self.std
        return Probe(tuple(float(v) for v in w), float(self.bias - np.dot(w, self.mean)))

    def to_dict(self) -> HiddenProbeDict:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weight": self.weight.tolist(),
            "bias": self.bias,
        }

    @classmethod
    def from_dict(cls, d: HiddenProbeDict) -> HiddenProbe:
        return cls(
            mean=np.asarray(d["mean"]),
            std=np.asarray(d["std"]),
            weight=np.asarray(d["weight"]),
            bias=float(d["bias"]),
        )
