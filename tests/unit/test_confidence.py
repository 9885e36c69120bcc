"""Per-token confidence signals against a float64 reference, and answer aggregates."""

from __future__ import annotations

import numpy as np
import pytest

from fleetvl.vlm.confidence import ConfidenceTracker, token_confidence


@pytest.mark.parametrize("seed", range(5))
def test_token_signals_match_float64_softmax(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(5000) * (seed + 1)).astype(np.float32)
    token = int(rng.integers(0, 5000))
    tc = token_confidence(logits, token)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    top = np.sort(p)[::-1]
    assert tc.prob == pytest.approx(p[token], rel=1e-4)
    assert tc.top1_prob == pytest.approx(top[0], rel=1e-4)
    assert tc.margin == pytest.approx(top[0] - top[1], abs=1e-5)
    assert tc.entropy == pytest.approx(-(p * np.log(p)).sum(), rel=1e-4)
    assert tc.logprob == pytest.approx(np.log(p[token]), abs=1e-4)


def test_signals_do_not_modify_logits() -> None:
    logits = np.arange(10, dtype=np.float32)
    before = logits.copy()
    token_confidence(logits, 3)
    np.testing.assert_array_equal(logits, before)


def test_peaked_distribution_is_confident() -> None:
    sharp = np.zeros(100, dtype=np.float32)
    sharp[7] = 20.0
    flat = np.zeros(100, dtype=np.float32)
    a, b = token_confidence(sharp, 7), token_confidence(flat, 7)
    assert a.prob > 0.99
    assert a.entropy < 0.01
    assert b.prob == pytest.approx(0.01)
    assert b.entropy == pytest.approx(np.log(100), rel=1e-5)


def test_tracker_aggregates() -> None:
    tr = ConfidenceTracker()
    for v in (20.0, 0.0):
        x = np.zeros(10, dtype=np.float32)
        x[1] = v
        tr.add(token_confidence(x, 1))
    s = tr.summary()
    assert s.num_tokens == 2
    assert s.min_prob == pytest.approx(0.1, rel=1e-4)
    assert s.mean_logprob == pytest.approx((np.log(1.0) + np.log(0.1)) / 2, abs=1e-4)
    assert tr.min_prob == s.min_prob
    assert ConfidenceTracker().summary().num_tokens == 0
