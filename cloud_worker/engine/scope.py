"""The cloud model's out-of-scope score: loading it at start, fitting and storing it.

A cloud model directory carries the same two files as an edge bundle
(:mod:`fleetvl.vlm.calibration`): ``calibration.json`` whose ``out_of_scope`` section
describes the score, and ``scope.npz`` with its arrays (:mod:`fleetvl.vlm.scope`). The
engine reads them at start (:func:`load_model_scope`); ``fleetvl calibrate --cloud`` and the
tests write them with :func:`fit_scope` then :func:`write_scope`:

    engine = CloudEngine(model_dir)
    model = fit_scope(engine, [ScopeExample([image], question, scene), ...])
    write_scope(model_dir, model, labelled_sha256=digest_of_the_set, examples=len(samples))

The inputs are computed by the engine itself (its own embeddings and vision tower), so a
scope model fits one model only; the engine refuses at start one fitted for another.

``fleetvl.vlm.calibration`` (pydantic) is imported only for a directory that has a
calibration: the engine stays importable on the GPU benchmark box (torch and transformers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud_worker.engine.model import model_digest
from fleetvl.errors import InputError
from fleetvl.vlm.camera import THUMB
from fleetvl.vlm.image import ImageInput
from fleetvl.vlm.processor import Prompt
from fleetvl.vlm.scope import ScopeInputs, ScopeModel

if TYPE_CHECKING:
    from cloud_worker.engine.engine import CloudEngine
    from cloud_worker.engine.requests import EngineRequest
    from fleetvl.vlm.calibration import Calibration

# fleetvl.vlm.calibration's CALIBRATION_FILE and SCOPE_FILE (a test keeps them equal).
CALIBRATION_FILE = "calibration.json"
SCOPE_FILE = "scope.npz"

__all__ = [
    "ScopeExample",
    "check_scorable",
    "fit_scope",
    "load_model_scope",
    "scope_inputs",
    "write_scope",
]


@dataclass(frozen=True)
class ScopeExample:
    """One in-scope calibration example: its images, its question, and the scene class it
    is about (a labelled set's ``scene`` field)."""

    images: Sequence[ImageInput]
    question: str
    scene: str


def load_model_scope(model_dir: str | Path) -> ScopeModel | None:
    """The scope model of ``model_dir``; None when it has no calibration or no
    ``out_of_scope`` section in it.

    Raises:
        InputError: the calibration or the arrays are broken, altered or missing, or the
            scope model was fitted on embeddings of another size than this model's.
    """
    d = Path(model_dir)
    if not (d / CALIBRATION_FILE).exists():
        return None
    from transformers import AutoConfig

    from fleetvl.vlm.calibration import load_calibration, load_scope

    scope = load_scope(d, load_calibration(d))
    if scope is None:
        return None
    # Score a blank input of this model's size: a model fitted for another one says so.
    hidden = AutoConfig.from_pretrained(d).get_text_config().hidden_size
    blank = np.zeros(hidden, dtype=np.float32)
    try:
        scope.score([ScopeInputs(blank, blank, np.zeros((THUMB, THUMB, 3), dtype=np.uint8))])
    except InputError as exc:
        raise InputError(f"{d / SCOPE_FILE} belongs to another model than this one "
                         f"({hidden}-value embeddings): {exc}; re-fit it") from None  # fmt: skip
    return scope


def score_scope(
    scope: ScopeModel | None, req: EngineRequest, timings: dict[str, float]
) -> str | None:
    """Score a prefilled request (with a scope model and images) into ``req.scope``: None to
    go on; ``"out_of_scope"`` when it is to finish now, without tokens or a slot; ``"failed"``
    when its features are unlike the model's (the error is sent to its caller alone)."""
    if scope is None or not req.scope_inputs:
        return None
    t0 = time.perf_counter()
    try:
        req.scope = scope.score(req.scope_inputs)
    except InputError as exc:
        req.out.put(exc)
        return "failed"
    finally:
        timings["scope_s"] += time.perf_counter() - t0
    if not req.scope.out_of_scope:
        return None
    timings["out_of_scope"] += 1
    return "out_of_scope"


def check_scorable(prompt: Prompt) -> None:
    """Raises InputError when an image of ``prompt`` has no thumbnail to score."""
    if any(img.thumb is None for img in prompt.images):
        raise InputError("the out-of-scope score needs each image's thumbnail: build images "
                         "with fleetvl.vlm.image.preprocess (CloudEngine.encode does)")  # fmt: skip


_CHUNK = 250  # examples per progress line


def scope_inputs(engine: CloudEngine, prompts: Sequence[Prompt]) -> list[list[ScopeInputs]]:
    """What the out-of-scope score reads for each prompt (one entry per image; empty without
    images), from a prefill on the engine thread with no decode step; the prompts are queued
    together, at batch priority, so they are prefilled in batches.

    Raises:
        InputError: an image has no thumbnail (built outside ``fleetvl.vlm.image``).
    """
    from cloud_worker.engine.requests import CloudResult
    from fleetvl.sampling import SamplingParams

    for p in prompts:
        check_scorable(p)
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    pending = [engine.submit(p, params, rank=2) for p in prompts]
    out = []
    for events in pending:
        result = None
        for ev in events:
            result = ev
        assert isinstance(result, CloudResult)
        out.append(result.scope_inputs)
    return out


def fit_scope(
    engine: CloudEngine,
    examples: Sequence[ScopeExample],
    *,
    alpha: float = 0.01,
    progress: Callable[[str], None] = lambda _m: None,
) -> ScopeModel:
    """Fit ``engine``'s scope model on in-scope examples.

    Each example is asked as one user turn (its images, then its question); the engine
    computes the inputs (a prefill each, batched, no decoding). Every scene needs at least
    eight examples (:meth:`fleetvl.vlm.scope.ScopeModel.fit`); ``alpha`` is the share of
    new in-scope inputs the score may flag.

    Raises:
        InputError: an example without images, too few examples of a scene, or a bad
            ``alpha``.
    """
    prompts = []
    for n, ex in enumerate(examples):
        if not ex.images:
            raise InputError(f"example {n} ({ex.question[:40]!r}) has no image to score")
        content: list[dict[str, str]] = [{"type": "image"} for _ in ex.images]
        content.append({"type": "text", "text": ex.question})
        prompts.append(engine.encode([{"role": "user", "content": content}], ex.images))
    inputs, scenes = [], []
    for start in range(0, len(prompts), _CHUNK):
        progress(f"scope inputs: {start}/{len(prompts)} examples")
        part = scope_inputs(engine, prompts[start : start + _CHUNK])
        for ex, got in zip(examples[start : start + _CHUNK], part, strict=True):
            inputs += got
            scenes += [ex.scene] * len(got)
    model = ScopeModel.fit(inputs, scenes, alpha=alpha)
    progress(f"fitted on {len(inputs)} images of {len(model.classes)} scenes")
    return model


def write_scope(
    model_dir: str | Path, model: ScopeModel, labelled_sha256: str, examples: int
) -> Calibration:
    """Store ``model`` in ``model_dir`` (``scope.npz``) and describe it in its
    ``calibration.json``: an existing calibration keeps its other fields; a new one has no
    gate signals (``base_accuracy`` 0: not measured). The engine loads it at its next start.

    Args:
        labelled_sha256: sha256 of the labelled set it was fitted on (for the record).
        examples: how many examples that set held.

    Returns:
        The calibration written.
    Raises:
        InputError: an existing ``calibration.json`` is not a valid calibration.
    """
    from fleetvl.vlm.calibration import Calibration, load_calibration, now_utc, save_scope

    d = Path(model_dir)
    summary = save_scope(model, d, labelled_sha256, examples)
    cal = load_calibration(d)
    if cal is None:
        cal = Calibration(bundle_digest=model_digest(d), created=now_utc(), examples=examples,
                          base_accuracy=0.0, signals={}, out_of_scope=summary)  # fmt: skip
    else:
        cal = cal.model_copy(update={"out_of_scope": summary})
    cal.save(d / CALIBRATION_FILE)
    return cal
