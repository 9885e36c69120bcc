"""The gate's scores, its exact early verdicts, and calibration thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleetvl.errors import InputError
from fleetvl.vlm.calibration import calibrate_signal, fit_probe
from fleetvl.vlm.confidence import TokenConfidence
from fleetvl.vlm.gate import Gate, score
from fleetvl.vlm.gate_signals import auroc


def tok(p: float, margin: float = 0.5) -> TokenConfidence:
    return TokenConfidence(0, p, math.log(p), p, margin, 1.0)


def test_scores() -> None:
    toks = [tok(0.5), tok(0.8), tok(0.2)]
    assert score("mean_prob", toks) == pytest.approx((0.5 * 0.8 * 0.2) ** (1 / 3))
    assert score("min_prob", toks) == 0.2
    assert score("mean_prob", []) == 0.0
    with pytest.raises(InputError, match="unknown confidence signal"):
        score("vibes", toks)


def test_gate_passes_at_the_threshold_and_not_below() -> None:
    toks = [tok(0.5), tok(0.5)]
    assert Gate("mean_prob", 0.5).verdict(toks).passed
    assert not Gate("mean_prob", 0.5 + 1e-9).verdict(toks).passed


@pytest.mark.parametrize("signal", ["mean_prob", "min_prob", "mean_margin", "min_margin"])
def test_hopeless_is_never_wrong(signal: str) -> None:
    """Whenever the gate calls an answer hopeless early, no continuation passes (brute force
    over continuations of perfect and poor tokens)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(2, 7))
        toks = [tok(float(p), float(g)) for p, g in rng.uniform(0.05, 1.0, (m, 2))]
        gate = Gate(signal, float(rng.uniform(0.1, 0.95)))
        for n in range(1, m + 1):
            if gate.hopeless(toks[:n], m):
                for k in range(n, m + 1):  # best continuation: perfect tokens up to length k
                    best = toks[:n] + [tok(1.0, 1.0)] * (k - n)
                    assert not gate.verdict(best).passed


def test_hopeless_fires_as_soon_as_a_min_signal_drops() -> None:
    watch = Gate("min_prob", 0.3).watch(10)
    toks = [tok(0.9)]
    assert not watch(toks)
    toks.append(tok(0.1))
    assert watch(toks)


def test_calibration_thresholds_meet_their_targets() -> None:
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    right = [False, False, True, False, True, True, True, True, True, True]
    cal = calibrate_signal("mean_prob", scores, right, accuracy_targets=(0.5, 0.9),
                           escalation_targets=(0.2,))  # fmt: skip
    t = cal.threshold_for_accuracy(0.5)
    # From 0.2, 7 of 9 released answers are right: a 95% lower bound of 0.504.
    assert t == 0.2
    # Only the all-right tail (6 of 6: bound 0.69) is sure enough for 0.65.
    assert cal.threshold_for_accuracy(0.65) == 0.5
    assert math.isinf(cal.threshold_for_accuracy(0.9))  # ten answers cannot show 90%
    assert cal.by_escalation_rate["0.2"] == 0.3  # escalates 0.1 and 0.2 only
    assert 0.5 < cal.auroc < 1.0
    assert math.isinf(calibrate_signal("x", [0.5], [False]).threshold_for_accuracy(0.5))


def test_wilson_lower_bound() -> None:
    from fleetvl.vlm.calibration import wilson_lower

    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(95, 100) == pytest.approx(0.9008, abs=1e-3)
    assert wilson_lower(100, 100) < 1.0
    assert wilson_lower(950, 1000) > wilson_lower(95, 100)  # more evidence, a tighter bound


def test_accuracy_target_holds_on_fresh_answers() -> None:
    """A threshold picked on 400 answers releases answers that are at least as accurate as
    asked on 50,000 new ones: the lower bound keeps the target from being met by luck."""
    rng = np.random.default_rng(3)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        s = rng.uniform(0, 1, n)
        return s, rng.uniform(0, 1, n) < 0.5 + 0.5 * s  # P(right) rises with the score

    for target in (0.8, 0.85, 0.9):
        s, r = draw(400)
        t = calibrate_signal("mean_prob", s, r).threshold_for_accuracy(target)
        assert math.isfinite(t)
        fs, fr = draw(50_000)
        assert fr[fs >= t].mean() >= target


def test_probe_learns_a_separable_direction() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8))
    y = x[:, 0] > 0
    probe = fit_probe(x, y)
    acc = np.mean([(probe(h) > 0.5) == yi for h, yi in zip(x, y, strict=True)])
    assert acc > 0.9


def test_probe_calibration_is_cross_fitted_so_noise_is_not_called_a_signal() -> None:
    """A probe fit on 200 calibration answers with 64-dim hidden states that carry nothing
    about correctness separates its own training set; the stored AUROC and thresholds come
    from held-out scores, so an operator is not told it is a good gate."""
    from fleetvl.vlm.calibration import calibrate_probe
    from fleetvl.vlm.gate_signals import HiddenProbe

    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 64))
    y = rng.random(200) < 0.7
    in_sample = auroc(HiddenProbe.fit(x, y).predict(x), y)
    probe, cal = calibrate_probe(x, y)
    assert in_sample > 0.8  # memorized
    assert cal.auroc is not None
    assert abs(cal.auroc - 0.5) < 0.12
    assert len(probe.weights) == 64
    # And a real signal still shows up after cross-fitting.
    y2 = x[:, 0] + 0.5 * rng.normal(size=200) > -0.5
    _, cal2 = calibrate_probe(x, y2)
    assert cal2.auroc is not None
    assert cal2.auroc > 0.8


def test_the_gate_probe_computes_what_the_fitted_probe_predicts() -> None:
    """Calibration hands the agent the cascade benchmark's probe, standardization folded in."""
    from fleetvl.vlm.gate_signals import HiddenProbe

    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (120, 6))
    y = x[:, 0] - 0.5 * x[:, 3] + rng.normal(0, 1.0, 120) > 2.0
    fitted = HiddenProbe.fit(x, y)
    gate_probe = fitted.to_gate_probe()
    assert np.allclose([gate_probe(row) for row in x[:10]], fitted.predict(x[:10]), atol=1e-9)
