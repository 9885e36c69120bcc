"""``fleetvl calibrate``: run a bundle over a labelled set and store its gate calibration.

Input is JSONL, one example per line: ``{"image": "a.png"}`` or ``{"images": [...]}`` (paths
relative to the file), ``"question"`` and ``"answer"`` (the expected answer). An answer is
right when, normalised by :func:`fleetvl.answers.normalize_answer`, it equals the expected
one (``match="exact"``) or contains it (``match="contains"``). The output is the bundle's
``calibration.json`` (see :mod:`fleetvl.vlm.calibration`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fleetvl.answers import answer_matches
from fleetvl.errors import InputError
from fleetvl.sampling import SamplingParams
from fleetvl.vlm.calibration import (
    CALIBRATION_FILE,
    Calibration,
    calibrate_probe,
    calibrate_signal,
    now_utc,
)
from fleetvl.vlm.gate import SIGNALS, score

__all__ = ["calibrate_bundle", "read_labelled_set"]


def read_labelled_set(path: Path) -> list[dict[str, Any]]:
    """The examples with image bytes loaded. Raises InputError naming the bad line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            paths = ex.get("images") or ([ex["image"]] if ex.get("image") else [])
            images = [(path.parent / p).read_bytes() for p in paths]
            out.append({"images": images, "question": str(ex["question"]),
                        "answer": str(ex["answer"])})  # fmt: skip
        except (json.JSONDecodeError, KeyError, OSError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}:{n}: not a labelled example ({exc})") from None
    if not out:
        raise InputError(f"{path} holds no examples")
    return out


def calibrate_bundle(
    bundle: Path,
    labelled: Path,
    *,
    max_tokens: int = 32,
    match: Literal["exact", "contains"] = "exact",
    probe: bool = True,
    out: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> Calibration:
    from edge_agent.engine import EdgeEngine

    engine = EdgeEngine(bundle)
    examples = read_labelled_set(labelled)
    per_signal: dict[str, list[float]] = {s: [] for s in SIGNALS if s != "probe"}
    correct: list[bool] = []
    hidden = []
    params = SamplingParams(max_tokens=max_tokens)
    for i, ex in enumerate(examples, 1):
        content = [{"type": "image"} for _ in ex["images"]]
        content.append({"type": "text", "text": ex["question"]})
        r = engine.generate(engine.encode([{"role": "user", "content": content}], ex["images"]),
                            params)  # fmt: skip
        for s in per_signal:
            per_signal[s].append(score(s, r.tokens))
        correct.append(answer_matches(r.text, ex["answer"], match))
        hidden.append(r.last_hidden)
        progress(f"[{i}/{len(examples)}] right={correct[-1]} answer={r.text[:40]!r}")
    signals = {s: calibrate_signal(s, v, correct) for s, v in per_signal.items()}
    weights, bias = None, 0.0
    if probe and 0 < sum(correct) < len(correct):
        p, signals["probe"] = calibrate_probe(np.stack(hidden), correct)
        weights, bias = list(p.weights), p.bias
    cal = Calibration(
        bundle_digest=engine.digest,
        created=now_utc(),
        examples=len(examples),
        base_accuracy=sum(correct) / len(correct),
        signals=signals,
        probe_weights=weights,
        probe_bias=bias,
    )
    cal.save(out or Path(bundle) / CALIBRATION_FILE)
    return cal
