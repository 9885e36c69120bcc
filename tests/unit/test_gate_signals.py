"""Gate signals and cascade metrics against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fleetvl.vlm.cascade_metrics import cascade_curve, oracle_scores, random_curve
from fleetvl.vlm.confidence import ConfidenceTracker, token_confidence
from fleetvl.vlm.gate_signals import TOKEN_SIGNALS, HiddenProbe, auroc, token_signal


def _auroc_pairs(scores: np.ndarray, ok: np.ndarray) -> float:
    pos, neg = scores[ok], scores[~ok]
    wins = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    return float(np.mean(wins))


def test_auroc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    ok = rng.random(40) < 0.5
    assert auroc(scores, ok) == pytest.approx(_auroc_pairs(scores, ok))
    assert auroc(np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 1.0
    assert auroc(np.arange(4.0), np.array([1, 1, 0, 0], bool)) == 0.0
    assert np.isnan(auroc(np.arange(3.0), np.ones(3, bool)))


def test_token_signals_rank_a_sure_answer_above_an_unsure_one() -> None:
    def summary(logit_gap: float) -> dict:
        t = ConfidenceTracker()
        logits = np.zeros(16, np.float32)
        logits[3] = logit_gap
        t.add(token_confidence(logits, 3))
        return t.summary().as_dict()

    sure, unsure = summary(8.0), summary(0.5)
    for name in TOKEN_SIGNALS:
        assert token_signal(name, sure) > token_signal(name, unsure), name
    empty = ConfidenceTracker().summary().as_dict()
    assert token_signal("mean_logprob", empty) == float("-inf")
    with pytest.raises(ValueError, match="unknown signal"):
        token_signal("vibes", sure)


def test_probe_learns_a_direction_in_hidden_space_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 24))
    ok = (x[:, 3] - 0.5 * x[:, 7] + 0.3 * rng.normal(size=400)) > 0
    probe = HiddenProbe.fit(x[:300], ok[:300])
    assert auroc(probe.predict(x[300:]), ok[300:]) > 0.9
    again = HiddenProbe.from_dict(probe.to_dict())
    assert np.allclose(again.predict(x[300:]), probe.predict(x[300:]))
    with pytest.raises(ValueError, match="features"):
        HiddenProbe.fit(x[:, 0], ok)


def _brute_accuracy(scores, edge, cloud, k) -> float:
    order = np.argsort(scores, kind="stable")
    esc = np.zeros(len(scores), bool)
    esc[order[:k]] = True
    return float(np.where(esc, cloud, edge).mean())


def test_cascade_curve_is_the_threshold_sweep() -> None:
    rng = np.random.default_rng(2)
    n = 50
    edge = rng.random(n) < 0.6
    cloud = rng.random(n) < 0.9
    scores = rng.normal(size=n)
    c = cascade_curve(scores, edge, cloud)
    for k in range(n + 1):
        assert c.accuracy[k] == pytest.approx(_brute_accuracy(scores, edge, cloud, k))
    assert c.accuracy[0] == pytest.approx(edge.mean())
    assert c.accuracy[-1] == pytest.approx(cloud.mean())
    oracle = cascade_curve(oracle_scores(edge, cloud), edge, cloud)
    assert np.all(oracle.accuracy >= c.accuracy - 1e-12)
    rand = random_curve(edge, cloud)
    assert rand.apgr() == pytest.approx(0.5)
    assert oracle.apgr() > c.apgr() or oracle.apgr() == pytest.approx(c.apgr())


def test_escalation_needed_for_gap_and_cloud_share() -> None:
    # Edge right on 6 of 10; cloud right on all; the gate ranks the 4 wrong ones lowest.
    edge = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], bool)
    cloud = np.ones(10, bool)
    perfect = cascade_curve(np.arange(10.0), edge, cloud)
    assert perfect.escalation_to_recover(0.5) == pytest.approx(0.2)
    assert perfect.escalation_to_recover(0.8) == pytest.approx(0.4)  # 4 of 4 errors: 100%
    assert perfect.escalation_to_reach(0.95) == pytest.approx(0.4)
    backwards = cascade_curve(-np.arange(10.0), edge, cloud)
    assert backwards.escalation_to_recover(0.5) == pytest.approx(0.8)
    assert backwards.apgr() < 0.5 < perfect.apgr()
    assert perfect.at(0.35) == pytest.approx(0.9)
