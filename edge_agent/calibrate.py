"""``fleetvl calibrate``: run a bundle over a labelled set and store its gate calibration.

Input is JSONL, one example per line: ``{"image": "a.png"}`` or ``{"images": [...]}`` (paths
relative to the file), ``"question"`` and ``"answer"`` (the expected answer), and optionally
``"scene"`` (the class the out-of-scope score matches questions to; ``fleetvl data write``
writes it; without it every example is one class) and ``"answerable"`` (lines with ``false``
are not in scope and are skipped). An answer is right when, normalised by
:func:`fleetvl.answers.normalize_answer`, it equals the expected one (``match="exact"``) or
contains it (``match="contains"``).

Output, in the bundle: ``calibration.json`` (see :mod:`fleetvl.vlm.calibration`) and ``scope.npz``,
the out-of-scope score fitted on these examples (see :mod:`fleetvl.vlm.scope`), whose
summary in ``calibration.json`` names the labelled set's sha256. The confidence thresholds
are read from the examples the scope score keeps (an input it refuses never reaches the
gate when served). Use a calibration split that no training run and no benchmark uses
(``fleetvl data write --split calib --faults 0.2``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from fleetvl.answers import answer_matches
from fleetvl.errors import InputError
from fleetvl.sampling import SamplingParams
from fleetvl.vlm.bundle_manifest import file_sha256
from fleetvl.vlm.calibration import (
    CALIBRATION_FILE,
    Calibration,
    calibrate_probe,
    calibrate_signal,
    now_utc,
    save_scope,
)
from fleetvl.vlm.gate import SIGNALS, score
from fleetvl.vlm.labelled_set import read_labelled_set
from fleetvl.vlm.scope import ScopeInputs, ScopeModel

__all__ = ["calibrate_bundle"]


def calibrate_bundle(
    bundle: Path,
    labelled: Path,
    *,
    max_tokens: int = 32,
    match: Literal["exact", "contains"] = "exact",
    probe: bool = True,
    alpha: float = 0.01,
    out: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> Calibration:
    """Run the bundle over the labelled set; write ``calibration.json`` (to ``out`` if given)
    and ``scope.npz`` beside it. (A cloud model's scope score: ``fleetvl calibrate --cloud``,
    :mod:`cloud_worker.engine.scope`.)

    Raises:
        InputError: a bad labelled set.
    """
    from edge_agent.engine import EdgeEngine

    engine = EdgeEngine(bundle)
    every = read_labelled_set(labelled)
    examples = [ex for ex in every if ex["answerable"]]
    if len(examples) < len(every):
        progress(f"skipping {len(every) - len(examples)} examples marked not answerable")
    if not examples:
        raise InputError(f"{labelled} holds no answerable examples")
    per_signal: dict[str, list[float]] = {s: [] for s in SIGNALS if s != "probe"}
    correct: list[bool] = []
    hidden = []
    scope_inputs: list[ScopeInputs] = []
    scenes: list[str] = []
    owner: list[int] = []  # example index of each scope input
    params = SamplingParams(max_tokens=max_tokens)
    for i, ex in enumerate(examples):
        content: list[dict[str, str]] = [{"type": "image"} for _ in ex["images"]]
        content.append({"type": "text", "text": ex["question"]})
        r = engine.generate(engine.encode([{"role": "user", "content": content}], ex["images"]),
                            params)  # fmt: skip
        for s in per_signal:
            per_signal[s].append(score(s, r.tokens))
        correct.append(answer_matches(r.text, ex["answer"], match))
        hidden.append(r.last_hidden)
        scope_inputs += r.scope_inputs
        scenes += [ex["scene"]] * len(r.scope_inputs)
        owner += [i] * len(r.scope_inputs)
        if (i + 1) % 100 == 0 or i + 1 == len(examples):
            progress(f"[{i + 1}/{len(examples)}] accuracy so far {sum(correct) / (i + 1):.3f}")
    dest = Path(out) if out else Path(bundle) / CALIBRATION_FILE
    keep = np.ones(len(examples), dtype=bool)
    summary = None
    model = _fit_scope(scope_inputs, scenes, alpha, progress)
    if model is not None:
        assert model.oof_scores is not None
        # An example the score refuses is never gated when served: leave it out below.
        for j in np.flatnonzero(model.oof_scores >= model.threshold):
            keep[owner[j]] = False
        summary = save_scope(model, dest.parent, file_sha256(Path(labelled)), len(examples))
        progress(f"out-of-scope score: {len(model.classes)} scenes, cross-fitted false alarms "
                 f"{summary.cross_fitted_false_alarm:.3f} (alpha {alpha})")  # fmt: skip
    kept = [c for c, k in zip(correct, keep, strict=True) if k]
    signals = {s: calibrate_signal(s, [x for x, k in zip(v, keep, strict=True) if k], kept)
               for s, v in per_signal.items()}  # fmt: skip
    weights, bias = None, 0.0
    if probe and 0 < sum(kept) < len(kept):
        # A missing hidden state leaves fewer states than labels: calibrate_probe refuses it.
        hidden_kept = [h for h, k in zip(hidden, keep, strict=True) if k and h is not None]
        p, signals["probe"] = calibrate_probe(np.stack(hidden_kept), kept)
        weights, bias = list(p.weights), p.bias
    cal = Calibration(
        bundle_digest=engine.digest,
        created=now_utc(),
        examples=len(kept),
        base_accuracy=sum(kept) / max(len(kept), 1),
        signals=signals,
        probe_weights=weights,
        probe_bias=bias,
        out_of_scope=summary,
    )
    cal.save(dest)
    return cal


def _fit_scope(
    inputs: list[ScopeInputs], scenes: list[str], alpha: float, progress: Callable[[str], None]
) -> ScopeModel | None:
    """The scope model, or None (said why) when the set has no images or too few examples of
    a scene: the thresholds are still calibrated, but no input is ever refused."""
    if not inputs:
        progress("no images in the set: no out-of-scope score")
        return None
    try:
        return ScopeModel.fit(inputs, scenes, alpha=alpha)
    except InputError as exc:
        progress(f"no out-of-scope score fitted: {exc}")
        return None
