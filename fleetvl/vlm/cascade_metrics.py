"""Edge -> cloud cascade metrics from per-question correctness and a gate score (NumPy).

The routing literature's numbers: accuracy against the fraction of questions escalated to the
strong model as the gate's threshold sweeps (lowest scores escalate first), compared with
random routing and the oracle; PGR (performance gap recovered, RouteLLM) and its area APGR;
the escalation needed to recover a share of the edge -> cloud gap or to reach a share of
cloud accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CascadeCurve", "cascade_curve", "oracle_scores", "random_curve"]


@dataclass
class CascadeCurve:
    """Accuracy after escalating the ``k`` lowest-scored questions, for k = 0..n."""

    escalated: np.ndarray  # fraction escalated, [n + 1]
    accuracy: np.ndarray  # [n + 1]
    edge_accuracy: float
    cloud_accuracy: float

    @property
    def gap(self) -> float:
        return self.cloud_accuracy - self.edge_accuracy

    def pgr(self) -> np.ndarray:
        """Performance gap recovered at each point (0 at the edge, 1 at the cloud)."""
        if self.gap <= 0:
            return np.full_like(self.accuracy, np.nan)
        return (self.accuracy - self.edge_accuracy) / self.gap

    def apgr(self) -> float:
        """Area under PGR over the escalated fraction in [0, 1] (random routing: 0.5)."""
        p = self.pgr()
        y, x = p, self.escalated
        return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)

    def escalation_to_recover(self, share: float) -> float:
        """Smallest escalated fraction whose PGR reaches ``share`` (NaN if never)."""
        return _first(self.escalated, self.pgr() >= share - 1e-12)

    def escalation_to_reach(self, accuracy: float) -> float:
        """Smallest escalated fraction whose accuracy reaches ``accuracy`` (NaN if never)."""
        return _first(self.escalated, self.accuracy >= accuracy - 1e-12)

    def at(self, fraction: float) -> float:
        """Accuracy with ``fraction`` of the questions escalated (nearest point below)."""
        k = int(np.floor(fraction * (len(self.accuracy) - 1) + 1e-9))
        return float(self.accuracy[k])


def _first(x: np.ndarray, ok: np.ndarray) -> float:
    hits = np.flatnonzero(ok)
    return float(x[hits[0]]) if len(hits) else float("nan")


def cascade_curve(scores: np.ndarray, edge_ok: np.ndarray, cloud_ok: np.ndarray) -> CascadeCurve:
    """The curve of a gate that escalates the lowest ``scores`` first (ties by index)."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(edge_ok, dtype=np.float64)
    c = np.asarray(cloud_ok, dtype=np.float64)
    n = len(s)
    if not (len(e) == len(c) == n) or n == 0:
        raise ValueError("scores, edge_ok and cloud_ok must be non-empty and of equal length")
    order = np.argsort(s, kind="stable")
    # k escalated: cloud answers the first k in order, the edge the rest.
    cloud_head = np.concatenate([[0.0], np.cumsum(c[order])])
    edge_tail = np.concatenate([[0.0], np.cumsum(e[order])])
    acc = (cloud_head + (e.sum() - edge_tail)) / n
    return CascadeCurve(
        escalated=np.arange(n + 1) / n,
        accuracy=acc,
        edge_accuracy=float(e.mean()),
        cloud_accuracy=float(c.mean()),
    )


def oracle_scores(edge_ok: np.ndarray, cloud_ok: np.ndarray) -> np.ndarray:
    """Scores of the oracle gate: questions only the cloud gets right escalate first."""
    return np.asarray(edge_ok, dtype=np.float64) - np.asarray(cloud_ok, dtype=np.float64)


def random_curve(edge_ok: np.ndarray, cloud_ok: np.ndarray) -> CascadeCurve:
    """Expected curve of random routing: a straight line from edge to cloud accuracy."""
    e = float(np.mean(edge_ok))
    c = float(np.mean(cloud_ok))
    f = np.arange(len(edge_ok) + 1) / len(edge_ok)
    return CascadeCurve(
        escalated=f, accuracy=(1 - f) * e + f * c, edge_accuracy=e, cloud_accuracy=c
    )
