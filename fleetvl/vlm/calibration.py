"""Calibration of the confidence gate from a labelled set: thresholds per target, per signal.

A bundle carries its own calibration (``calibration.json`` next to its manifest): thresholds
shift with quantization, so an INT4 bundle cannot reuse the fp32 numbers. For each signal the
file holds the trade-off curve (threshold -> escalation rate and accuracy of the answers
released locally), AUROC of the signal as a predictor of a correct answer, and thresholds for
targets: "released answers at least X accurate" and "escalate at most Y of the traffic".

Thresholds for an accuracy target are conservative: the smallest threshold whose released
answers have a one-sided 95% Wilson lower bound on their accuracy at or above the target, so
the asked accuracy holds on new data, not just on the calibration set.

The same file carries the out-of-scope score's summary (``out_of_scope``): its arrays live in
``scope.npz`` beside it (see :mod:`fleetvl.vlm.scope`), checked by their sha256 when loaded,
with the digest and size of the labelled set it was fitted on. A cloud model directory
carries the same two files for its own model.

The pure statistics live here (shared by the edge agent and the cascade work); running the
model over the labelled set is the tier's job (``fleetvl calibrate``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetvl.errors import InputError
from fleetvl.vlm.gate import Probe
from fleetvl.vlm.gate_signals import HiddenProbe, auroc

if TYPE_CHECKING:
    from fleetvl.vlm.scope import ScopeModel

__all__ = [
    "CALIBRATION_FILE",
    "SCOPE_FILE",
    "Calibration",
    "CurvePoint",
    "ScopeSummary",
    "SignalCalibration",
    "calibrate_probe",
    "calibrate_signal",
    "fit_probe",
    "load_calibration",
    "load_scope",
    "save_scope",
    "wilson_lower",
]

CALIBRATION_FILE = "calibration.json"
SCOPE_FILE = "scope.npz"
_Z95 = 1.6449  # one-sided 95%


def wilson_lower(right: int, n: int, z: float = _Z95) -> float:
    """One-sided Wilson lower confidence bound on an accuracy of ``right`` out of ``n``."""
    if n <= 0:
        return 0.0
    p = right / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


class CurvePoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    threshold: float = Field(description="Scores >= threshold are answered locally.")
    escalation_rate: float = Field(ge=0, le=1, description="Share of the set below threshold.")
    accuracy: float | None = Field(
        description="Accuracy of the answers released locally; None when none are released."
    )
    released: int = Field(0, ge=0, description="Answers released locally at this threshold.")
    right: int = Field(0, ge=0, description="Of those, right ones.")


class SignalCalibration(BaseModel):
    model_config = ConfigDict(frozen=True)

    signal: str = Field(description="Signal name (see fleetvl.vlm.gate.SIGNALS).")
    auroc: float | None = Field(
        description="P(score of a right answer > score of a wrong one); None if one class only."
    )
    curve: list[CurvePoint] = Field(description="Trade-off curve, thresholds ascending.")
    by_accuracy: dict[str, float | None] = Field(
        description="Target accuracy of released answers -> smallest threshold whose released "
        "answers' 95% lower bound reaches it (None: none does, so every answer escalates)."
    )
    by_escalation_rate: dict[str, float] = Field(
        description="Target escalation rate -> threshold escalating at most that share."
    )

    def threshold_for_accuracy(self, target: float) -> float:
        """Smallest threshold whose released answers are at least ``target`` accurate with 95%
        confidence (Wilson lower bound) on the calibration set; ``inf`` (escalate
        everything) when none is. A curve without counts (an older file) uses the plain
        accuracy."""
        for p in self.curve:
            if p.accuracy is None:
                continue
            sure = wilson_lower(p.right, p.released) if p.released else p.accuracy
            if sure >= target:
                return p.threshold
        return math.inf


class ScopeSummary(BaseModel):
    """What a bundle's (or cloud model's) out-of-scope score is and what it was fitted on."""

    model_config = ConfigDict(frozen=True)

    file: str = Field(SCOPE_FILE, description="The arrays, next to this file.")
    sha256: str = Field(description="sha256 of that file; checked when it is loaded.")
    threshold: float = Field(description="Scores at or above it are out of scope.")
    alpha: float = Field(gt=0, lt=0.5, description="In-scope share flagged (conformal bound).")
    classes: list[str] = Field(description="Scene classes the question is matched to.")
    examples: int = Field(ge=1, description="In-scope examples it was fitted on.")
    fitted_on_sha256: str = Field(description="sha256 of the labelled set it was fitted on.")
    cross_fitted_false_alarm: float = Field(
        ge=0, le=1, description="Share of the fitting examples a model that never saw them "
        "calls out of scope (what to expect on new in-scope data)."
    )


class Calibration(BaseModel):
    model_config = ConfigDict(frozen=True)

    bundle_digest: str = Field(description="Digest of the bundle that was calibrated.")
    created: str = Field(description="UTC time of the calibration run.")
    examples: int = Field(ge=1, description="Labelled examples used.")
    base_accuracy: float = Field(ge=0, le=1, description="Accuracy with no gate at all.")
    signals: dict[str, SignalCalibration]
    probe_weights: list[float] | None = Field(None, description="Hidden-state probe weights.")
    probe_bias: float = 0.0
    out_of_scope: ScopeSummary | None = Field(
        None, description="The out-of-scope score (None: the model scores no input out of scope)."
    )

    @property
    def probe(self) -> Probe | None:
        if self.probe_weights is None:
            return None
        return Probe(tuple(self.probe_weights), self.probe_bias)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(path)


def load_calibration(bundle_dir: Path) -> Calibration | None:
    """The bundle's calibration, or None when it has none.

    Raises:
        InputError: the file exists but is not a valid calibration.
    """
    path = Path(bundle_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        return Calibration.model_validate(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a valid calibration: {exc}") from None


def save_scope(model: ScopeModel, where: Path, fitted_on_sha256: str,
               examples: int) -> ScopeSummary:  # fmt: skip
    """Store ``model`` as ``where/scope.npz`` and return the summary a calibration keeps."""
    from fleetvl.vlm.bundle_manifest import file_sha256

    where.mkdir(parents=True, exist_ok=True)
    path = where / SCOPE_FILE
    model.save(path)
    oof = model.oof_scores
    return ScopeSummary(
        file=SCOPE_FILE,
        sha256=file_sha256(path),
        threshold=model.threshold,
        alpha=model.alpha,
        classes=list(model.classes),
        examples=examples,
        fitted_on_sha256=fitted_on_sha256,
        cross_fitted_false_alarm=float(np.mean(oof >= model.threshold)) if oof is not None
        else 0.0,
    )  # fmt: skip


def load_scope(model_dir: Path, cal: Calibration | None) -> ScopeModel | None:
    """The scope model ``cal`` describes, from ``model_dir``; None when it has none.

    Raises:
        InputError: the arrays are missing, altered (sha256) or not a scope model.
    """
    from fleetvl.vlm.bundle_manifest import file_sha256
    from fleetvl.vlm.scope import ScopeModel

    if cal is None or cal.out_of_scope is None:
        return None
    summary = cal.out_of_scope
    path = Path(model_dir) / summary.file
    if not path.exists():
        raise InputError(f"{path} is missing: {CALIBRATION_FILE} names it as its scope model")
    if file_sha256(path) != summary.sha256:
        raise InputError(
            f"{path} does not match the sha256 in {CALIBRATION_FILE}: re-run fleetvl calibrate"
        )
    return ScopeModel.load(path)


def _auroc(scores: np.ndarray, correct: np.ndarray) -> float | None:
    value = auroc(scores, correct)
    return None if math.isnan(value) else value


def calibrate_signal(
    signal: str,
    scores: Sequence[float],
    correct: Sequence[bool],
    accuracy_targets: Sequence[float] = (0.8, 0.9, 0.95, 0.99),
    escalation_targets: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
) -> SignalCalibration:
    """The trade-off curve and target thresholds of one signal on a labelled set.

    Raises:
        InputError: empty set, or ``scores`` and ``correct`` of different lengths.
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if len(s) == 0 or len(s) != len(c):
        raise InputError(f"need as many labels as scores (>0), got {len(s)} and {len(c)}")
    n = len(s)
    curve = []
    for t in np.unique(s):  # ascending; every distinct score is a candidate threshold
        released = s >= t
        k = int(released.sum())
        right = int(c[released].sum())
        acc = right / k if k else None
        curve.append(CurvePoint(threshold=float(t), escalation_rate=1 - k / n, accuracy=acc,
                                released=k, right=right))  # fmt: skip
    cal = SignalCalibration(
        signal=signal,
        auroc=_auroc(s, c),
        curve=curve,
        by_accuracy={},
        by_escalation_rate={},
    )
    by_acc = {}
    for a in accuracy_targets:
        t = cal.threshold_for_accuracy(a)
        by_acc[f"{a:g}"] = None if math.isinf(t) else t
    by_esc = {}
    for r in escalation_targets:
        # The largest threshold that escalates no more than r of the set.
        ok = [p.threshold for p in curve if p.escalation_rate <= r + 1e-12]
        by_esc[f"{r:g}"] = max(ok) if ok else curve[0].threshold
    return cal.model_copy(update={"by_accuracy": by_acc, "by_escalation_rate": by_esc})


def fit_probe(
    hidden: np.ndarray, correct: Sequence[bool] | np.ndarray, l2: float = 1.0
) -> Probe:
    """Logistic regression of correctness on the final hidden state: the cascade benchmark's
    :class:`~fleetvl.vlm.gate_signals.HiddenProbe` (standardized features, IRLS with an L2
    penalty), folded into the gate's one-dot-product :class:`Probe`.

    Raises:
        InputError: not one hidden state per label, or fewer than two examples.
    """
    try:
        return HiddenProbe.fit(np.asarray(hidden), np.asarray(correct, dtype=bool), l2=l2) \
            .to_gate_probe()  # fmt: skip
    except ValueError as exc:
        raise InputError(str(exc)) from None


def calibrate_probe(
    hidden: np.ndarray, correct: Sequence[bool], l2: float = 1.0
) -> tuple[Probe, SignalCalibration]:
    """The gate's probe fit on every example, with its trade-off curve and thresholds read
    from cross-fitted scores (each example scored by a probe that never saw it), so the
    stored AUROC and target thresholds are what the probe does on new questions.

    Raises:
        InputError: not one hidden state per label, or fewer than two examples.
    """
    x = np.asarray(hidden, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    probe = fit_probe(x, c, l2=l2)
    held_out = HiddenProbe.out_of_fold(x, c, l2=l2)  # P(correct), like the gate's Probe
    return probe, calibrate_signal("probe", held_out.tolist(), c.tolist())


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
