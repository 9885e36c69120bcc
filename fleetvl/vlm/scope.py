"""The out-of-scope score: is this input something the model was trained to answer?

A confident answer is not enough: a small VLM is often surest on inputs unlike anything it
saw (a covered lens, a photo of a cat asked about a breaker, a camera pointed at the wrong
equipment). The scope model scores each request before any token is generated, from what the
engines already have: the vision tower's output, the prompt's token embeddings, and a
thumbnail taken during preprocessing. The question's words (their mean input embedding)
pick the scene class the question is about (the nearest class, Mahalanobis), and two parts
measure the image against that class:

* ``vision``: the image's mean vision embedding (Mahalanobis, shared covariance), so a shelf
  question on a substation image is far even though the image is near another class.
* ``camera``: what a camera-health check looks at, on a 28 x 28 thumbnail — exposure,
  contrast, colour, saturation, black and white fractions, sharpness at two scales, and a
  4 x 4 layout of brightness and edge directions — against the class's own Gaussian (blur,
  glare, darkness, a cover, noise). The layout is compared upright and turned by 90, 180 and
  270 degrees and the closest counts: a camera mounted sideways still shows its scene.

Each part's distance is divided by its boundary, and the score is the larger ratio: 1.0 or
more is out of scope. The boundaries come from cross-fitted distances (each calibration
example measured by a model that never saw it): per class, each part's 99th percentile, then
one conformal quantile at ``alpha`` over both, so new in-scope data is flagged about
``alpha`` of the time. Nothing out of scope is used to fit any part or to choose a boundary.

The question's distance itself is not a part: a small model's embeddings of words it never
learned land anywhere, so "a question unlike any calibrated one" cannot be read from them
reliably. A question about another scene is caught through the image parts.

NumPy only; a fitted model is stored as ``.npz`` (no pickles) next to a bundle's calibration,
or a cloud model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetvl.errors import InputError
from fleetvl.vlm.camera import THUMB, TURNS, camera_vector

__all__ = ["PARTS", "ScopeInputs", "ScopeModel", "ScopeScore", "question_span", "request_inputs"]

PARTS = ("vision", "camera")
_SHRINK = 0.1  # covariance shrinkage towards a scaled identity
FORMAT = 6


@dataclass(frozen=True)
class ScopeInputs:
    """What the scope model reads for one image of a request.

    ``vision`` is None when the engine did not run the vision tower for the image (its KV
    came from a cached prefix): that part is then skipped.
    """

    question: np.ndarray  # [D] mean input embedding of the prompt text after the image
    vision: np.ndarray | None  # [D] mean of the image's vision-tower output
    thumb: np.ndarray  # [THUMB, THUMB, 3] uint8
    # camera_vector(thumb), when preprocessing already computed it (while the image was
    # still in the CPU's caches); None: computed from ``thumb`` when scored.
    camera: np.ndarray | None = None


def question_span(
    input_ids: np.ndarray, image_token_id: int, special_ids: frozenset[int]
) -> tuple[int, int]:
    """``[start, end)`` of the question's own words: the text after the last image up to the
    next special token (the chat template's markers around it are the same in every prompt
    and would only drown the words). A prompt with no words there gives the whole tail."""
    ids = np.asarray(input_ids)
    at = np.flatnonzero(ids == image_token_id)
    start = int(at[-1]) + 1 if len(at) else 0
    while start < len(ids) and int(ids[start]) in special_ids:
        start += 1
    end = start
    while end < len(ids) and int(ids[end]) not in special_ids:
        end += 1
    if end == start:
        return (int(at[-1]) + 1 if len(at) else 0), len(ids)
    return start, end


def request_inputs(
    question_embeds: np.ndarray,
    vision: Sequence[np.ndarray | None],
    thumbs: Sequence[np.ndarray | None],
    cameras: Sequence[np.ndarray | None] | None = None,
) -> list[ScopeInputs]:
    """The scope inputs of one request: ``question_embeds`` ``[T, D]`` are the input
    embeddings of :func:`question_span`; ``vision[i]`` the vision-tower output
    ``[tokens, D]`` of image ``i`` (None: not computed here); ``thumbs[i]`` its thumbnail and
    ``cameras[i]`` its :func:`camera_vector` if preprocessing computed it.

    Raises:
        InputError: an image without a thumbnail (built outside ``fleetvl.vlm.image``).
    """
    if any(t is None for t in thumbs):
        raise InputError("the scope score needs each image's thumbnail (preprocess it with "
                         "fleetvl.vlm.image.preprocess)")  # fmt: skip
    q = _mean_rows(question_embeds)
    cams = list(cameras) if cameras is not None else [None] * len(thumbs)
    return [
        ScopeInputs(q, None if v is None else _mean_rows(v), t, c)
        for v, t, c in zip(vision, thumbs, cams, strict=True)
        if t is not None
    ]


def _mean_rows(x: np.ndarray) -> np.ndarray:
    """``x.mean(0)`` as a product: at these sizes a NumPy reduction along an axis costs
    several times more, and this runs on every request."""
    x = np.asarray(x, dtype=np.float32)
    mean: np.ndarray = np.ones(len(x), dtype=np.float32) @ x * np.float32(1 / len(x))
    return mean


@dataclass(frozen=True)
class ScopeScore:
    """The scope verdict on one request (its worst image decides)."""

    score: float  # >= threshold: out of scope
    threshold: float
    scene: str  # the class the question matched
    part: str  # the part with the largest ratio (what looked out of scope)
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def out_of_scope(self) -> bool:
        return self.score >= self.threshold

    def with_part(self, part: str, ratio: float) -> ScopeScore:
        """This verdict with one more part measured outside the model (the agent's frozen-feed
        check): ``ratio`` 1.0 or more is out of scope, and the larger ratio decides."""
        parts = {**self.parts, part: ratio}
        score = ratio * self.threshold
        if score > self.score:
            return ScopeScore(score, self.threshold, self.scene, part, parts)
        return ScopeScore(self.score, self.threshold, self.scene, self.part, parts)

    def as_dict(self) -> dict[str, object]:
        """The JSON of an answer's ``fleetvl.out_of_scope`` (the keys of
        :func:`fleetvl.protocol.convert.scope_dict`, plus each part's ratio)."""
        return {"score": round(self.score, 4), "threshold": round(self.threshold, 4),
                "out_of_scope": self.out_of_scope, "part": self.part, "scene": self.scene,
                "parts": {k: round(v, 4) for k, v in self.parts.items()}}  # fmt: skip


def _whitener(x: np.ndarray) -> np.ndarray:
    """``W`` with ``|W z|^2`` the Mahalanobis distance under the shrunk covariance of ``x``."""
    d = x.shape[1]
    cov = np.cov(x.T) if len(x) > 1 else np.eye(d)
    scale = float(np.trace(cov)) / d or 1.0
    prec = np.linalg.inv((1 - _SHRINK) * cov + _SHRINK * scale * np.eye(d))
    return np.linalg.cholesky(prec).T


def _conformal(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score: a new exchangeable in-scope score
    exceeds it with probability at most ``alpha``."""
    n = len(scores)
    rank = min(n, math.ceil((n + 1) * (1 - alpha)))
    return float(np.sort(scores)[rank - 1])


@dataclass
class _Stats:
    """The fitted Gaussians, kept whitened: a distance is one product and a norm."""

    # The question's nearest class under the shared covariance, as the linear rule it is
    # (argmax of q_a @ q + q_b): a [k, Dq] product, not a [Dq, Dq] one, per request.
    q_a: np.ndarray  # [k, Dq]
    q_b: np.ndarray  # [k]
    v_w: np.ndarray  # [Dv, Dv]
    v_mw: np.ndarray  # [k, Dv]
    c_w: np.ndarray  # [k, F, F] per class
    c_mw: np.ndarray  # [k, F]

    @classmethod
    def fit(cls, q: np.ndarray, v: np.ndarray, cam: np.ndarray, y: np.ndarray, k: int) -> _Stats:
        q_mu = np.stack([q[y == c].mean(0) for c in range(k)])
        v_mu = np.stack([v[y == c].mean(0) for c in range(k)])
        q_w, v_w = _whitener(q - q_mu[y]), _whitener(v - v_mu[y])
        q_a = q_mu @ (q_w.T @ q_w)
        q_b = -0.5 * np.einsum("kd,kd->k", q_a, q_mu)
        c_w = np.stack([_whitener(cam[y == c] - cam[y == c].mean(0)) for c in range(k)])
        c_mu = np.stack([cam[y == c].mean(0) for c in range(k)])
        return cls(q_a, q_b, v_w, v_mu @ v_w.T, c_w, np.einsum("kij,kj->ki", c_w, c_mu))

    def distances(
        self, q: np.ndarray, v: np.ndarray, cam4: np.ndarray, scene: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances ``[n, len(PARTS)]``, class measured against ``[n]``).

        ``cam4`` holds each image's camera vector in its four turns ``[n, 4, F]``; a NaN
        vision row gives a NaN vision distance. ``scene`` None: the question's nearest class.
        """
        c = (q @ self.q_a.T + self.q_b).argmax(1) if scene is None else scene
        out = np.empty((len(q), len(PARTS)))
        dv = (v @ self.v_w.T) - self.v_mw[c]
        out[:, 0] = np.einsum("nd,nd->n", dv, dv)
        z = np.einsum("nij,ntj->nti", self.c_w[c], cam4) - self.c_mw[c][:, None, :]
        out[:, 1] = np.einsum("ntf,ntf->nt", z, z).min(1)
        return out, c


_STATS = ("q_a", "q_b", "v_w", "v_mw", "c_w", "c_mw")


def _features(
    inputs: Sequence[ScopeInputs], vision_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(questions, vision (NaN rows where missing), camera vectors in four turns)."""
    if len(inputs) == 1:  # every served request: skip the stacking
        x = inputs[0]
        vis = np.full(vision_dim, np.nan, np.float32) if x.vision is None else x.vision
        cam = (camera_vector(x.thumb) if x.camera is None else x.camera).astype(np.float32)
        return (np.asarray(x.question, np.float32)[None], np.asarray(vis, np.float32)[None],
                cam[TURNS][None])  # fmt: skip
    q = np.stack([np.asarray(x.question, dtype=np.float32) for x in inputs])
    v = np.stack([np.full(vision_dim, np.nan, dtype=np.float32) if x.vision is None
                  else np.asarray(x.vision, dtype=np.float32) for x in inputs])  # fmt: skip
    cam = np.stack([camera_vector(x.thumb) if x.camera is None else x.camera
                    for x in inputs]).astype(np.float32)  # fmt: skip
    return q, v, cam[:, TURNS]


class ScopeModel:
    """A fitted scope model: per-class statistics of each part and the parts' boundaries."""

    def __init__(self, classes: Sequence[str], stats: _Stats, bounds: np.ndarray,
                 alpha: float) -> None:  # fmt: skip
        self.classes = list(classes)
        self.stats = stats
        self.bounds = bounds  # [k, parts]: distance at which each part's ratio reaches 1.0
        self.alpha = float(alpha)
        self.threshold = 1.0
        # Cross-fitted scores of the calibration examples (set by ``fit``; for reports).
        self.oof_scores: np.ndarray | None = None

    # -- scoring ------------------------------------------------------------------------

    def ratios(self, inputs: Sequence[ScopeInputs]) -> tuple[np.ndarray, np.ndarray]:
        """(each part's ratio to its boundary ``[n, parts]``, matched class ``[n]``)."""
        q, v, cam4 = _features(inputs, self.stats.v_w.shape[0])
        d, scene = self.stats.distances(q, v, cam4)
        return d / self.bounds[scene], scene

    def score(self, inputs: Sequence[ScopeInputs]) -> ScopeScore:
        """The verdict on one request's images (the worst image decides).

        Raises:
            InputError: no images, or features of the wrong size for this model.
        """
        if not inputs:
            raise InputError("the scope score needs at least one image")
        self._check(inputs)
        r, scene = self.ratios(inputs)
        rows = r.tolist()
        best, i, j = -math.inf, 0, 0
        for a, row in enumerate(rows):
            for b, v in enumerate(row):
                if v > best:  # NaN (a missing part) never wins
                    best, i, j = v, a, b
        parts = {p: v for p, v in zip(PARTS, rows[i], strict=True) if not math.isnan(v)}
        return ScopeScore(best, self.threshold, self.classes[int(scene[i])], PARTS[j], parts)

    def scores(self, inputs: Sequence[ScopeInputs]) -> np.ndarray:
        """The score of each image (benchmarks)."""
        r, _ = self.ratios(inputs)
        best: np.ndarray = np.nanmax(r, axis=1)
        return best

    def _check(self, inputs: Sequence[ScopeInputs]) -> None:
        dq, dv = self.stats.q_a.shape[1], self.stats.v_w.shape[0]
        for x in inputs:
            if x.question.shape != (dq,) or (x.vision is not None and x.vision.shape != (dv,)):
                raise InputError(
                    f"scope model expects embeddings of {dq} and {dv} values, got "
                    f"{x.question.shape} and {None if x.vision is None else x.vision.shape}: "
                    "it was fitted for another model"
                )
            if x.thumb.shape != (THUMB, THUMB, 3):
                raise InputError(f"thumbnail must be {THUMB}x{THUMB}x3, got {x.thumb.shape}")

    # -- fitting ------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        inputs: Sequence[ScopeInputs],
        scenes: Sequence[str],
        *,
        alpha: float = 0.01,
        folds: int = 5,
        seed: int = 0,
    ) -> ScopeModel:
        """Fit on in-scope examples labelled with their scene class.

        Raises:
            InputError: fewer than ``max(folds, 8)`` examples of a class, a missing vision
                embedding, or ``alpha`` outside (0, 0.5).
        """
        if not 0 < alpha < 0.5:
            raise InputError(f"alpha={alpha}: the false-alarm target must be in (0, 0.5)")
        if any(x.vision is None for x in inputs):
            raise InputError("every calibration example needs its vision embedding")
        classes = sorted(set(scenes))
        y = np.asarray([classes.index(s) for s in scenes])
        counts = np.bincount(y, minlength=len(classes))
        if counts.min() < max(folds, 8):
            small = classes[int(counts.argmin())]
            raise InputError(
                f"scene {small!r} has {counts.min()} examples; the scope model needs at "
                f"least {max(folds, 8)} of every scene"
            )
        q, v, cam4 = (a.astype(np.float64) for a in _features(inputs, len(inputs[0].vision)))  # type: ignore[arg-type]
        k = len(classes)
        rng = np.random.default_rng(seed)
        fold = np.empty(len(y), dtype=int)
        for c in range(k):  # stratified: every fold sees every class
            idx = rng.permutation(np.flatnonzero(y == c))
            fold[idx] = np.arange(len(idx)) % folds
        raw = np.empty((len(y), len(PARTS)))
        matched = np.empty(len(y), dtype=int)
        for f in range(folds):
            tr, te = fold != f, fold == f
            st = _Stats.fit(q[tr], v[tr], cam4[tr, 0], y[tr], k)
            raw[te], matched[te] = st.distances(q[te], v[te], cam4[te])
        # Each part's scale per class is read off cross-fitted distances (what new in-scope
        # data looks like), not the fitting data's own, which sit closer to their means.
        scale = np.stack([
            np.maximum(np.quantile(raw[matched == c] if (matched == c).sum() >= 8 else raw,
                                   0.99, axis=0), 1e-9)
            for c in range(k)
        ])  # fmt: skip
        r = raw / scale[matched]
        edge = _conformal(np.nanmax(r, axis=1), alpha)
        model = cls(classes, _Stats.fit(q, v, cam4[:, 0], y, k), scale * edge, alpha)
        model.oof_scores = np.nanmax(r, axis=1) / edge
        return model

    # -- storage ------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        s = self.stats
        tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
        f32 = {n: getattr(s, n).astype(np.float32) for n in _STATS}
        np.savez(
            tmp, format=np.asarray(FORMAT), classes=np.asarray(self.classes),
            alpha=np.asarray(self.alpha), bounds=self.bounds, **f32,
        )  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ScopeModel:
        """Raises InputError for a file that is not a scope model of this format."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != FORMAT:
                    raise InputError(f"{path}: scope format {int(z['format'])}, expected {FORMAT}")
                # float32 as stored: half the memory a request reads, cold in the cache.
                stats = _Stats(*(z[n] for n in _STATS))
                return cls([str(c) for c in z["classes"]], stats, z["bounds"], float(z["alpha"]))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path} is not a valid scope model: {exc}") from None
