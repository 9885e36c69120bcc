"""The out-of-scope score on synthetic scenes: calibrated false alarms, each part doing its
job, invariance to a turned camera, and storage that refuses tampering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleetvl.errors import InputError
from fleetvl.vlm.calibration import (
    CALIBRATION_FILE,
    Calibration,
    ScopeSummary,
    load_calibration,
    load_scope,
)
from fleetvl.vlm.camera import THUMB, thumbnail
from fleetvl.vlm.scope import ScopeInputs, ScopeModel, request_inputs

D = 16
CLASSES = ("stripes", "disc", "checker")
_Q = np.random.default_rng(100).normal(0, 1, (3, D))  # one question direction per scene
_V = np.random.default_rng(101).normal(0, 1, (3, D))


def _picture(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A scene of ``kind`` at 96 px, jittered, with sensor noise."""
    yy, xx = np.mgrid[:96, :96].astype(float)
    if kind == 0:
        lum = 0.5 + 0.4 * np.sign(np.sin(xx / rng.uniform(5, 7) + rng.uniform(0, 6)))
    elif kind == 1:
        c = rng.uniform(40, 56, 2)
        lum = np.where((xx - c[0]) ** 2 + (yy - c[1]) ** 2 < rng.uniform(500, 700), 0.9, 0.2)
    else:
        s = rng.uniform(10, 14)
        lum = 0.3 + 0.5 * ((np.floor(xx / s) + np.floor(yy / s)) % 2)
    tint = np.asarray([[0.9, 0.6, 0.3], [0.3, 0.8, 0.4], [0.5, 0.5, 0.9]][kind])
    rgb = lum[..., None] * tint * 255 + rng.normal(0, 6, (96, 96, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _inputs(kind: int, rng: np.random.Generator, *, question: int | None = None,
            image: np.ndarray | None = None) -> ScopeInputs:  # fmt: skip
    q = _Q[kind if question is None else question] + rng.normal(0, 0.1, D)
    v = _V[kind] + rng.normal(0, 0.2, D)
    return ScopeInputs(q, v, thumbnail(_picture(kind, rng) if image is None else image))


@pytest.fixture(scope="module")
def fitted() -> ScopeModel:
    rng = np.random.default_rng(0)
    kinds = [i % 3 for i in range(900)]
    return ScopeModel.fit([_inputs(k, rng) for k in kinds], [CLASSES[k] for k in kinds],
                          alpha=0.02)  # fmt: skip


def test_false_alarms_on_fresh_in_scope_data_are_about_alpha(fitted: ScopeModel) -> None:
    rng = np.random.default_rng(1)
    fresh = [_inputs(i % 3, rng) for i in range(900)]
    flagged = float(np.mean(fitted.scores(fresh) >= fitted.threshold))
    assert flagged <= 3 * fitted.alpha
    assert fitted.oof_scores is not None
    assert np.mean(fitted.oof_scores >= fitted.threshold) <= fitted.alpha + 2 / 900


def test_each_part_catches_what_it_is_for(fitted: ScopeModel) -> None:
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    v = fitted.score([_inputs(0, rng, image=noise)])
    assert v.out_of_scope
    assert v.part == "camera"
    assert v.scene == "stripes"
    # A disc question on a stripes image (its vision embedding and thumbnail are stripes).
    wrong = fitted.score([_inputs(0, rng, question=1)])
    assert wrong.out_of_scope
    assert wrong.scene == "disc"
    assert wrong.part in ("vision", "camera")
    ok = fitted.score([_inputs(1, rng)])
    assert not ok.out_of_scope
    assert set(ok.parts) == {"vision", "camera"}


def test_a_turned_camera_is_not_out_of_scope(fitted: ScopeModel) -> None:
    rng = np.random.default_rng(3)
    turned = 0
    for i in range(60):
        k = i % 3
        img = np.ascontiguousarray(np.rot90(_picture(k, rng), 1 + i % 3))
        turned += fitted.score([_inputs(k, rng, image=img)]).out_of_scope
    assert turned <= 6  # about the in-scope rate, not a wall of refusals


def test_missing_vision_is_skipped_and_bad_inputs_are_refused(fitted: ScopeModel) -> None:
    rng = np.random.default_rng(4)
    x = _inputs(2, rng)
    partial = fitted.score([ScopeInputs(x.question, None, x.thumb)])
    assert "vision" not in partial.parts
    with pytest.raises(InputError, match="fitted for another model"):
        fitted.score([ScopeInputs(np.zeros(D + 1), None, x.thumb)])
    with pytest.raises(InputError, match="thumbnail"):
        fitted.score([ScopeInputs(x.question, None, np.zeros((8, 8, 3), np.uint8))])
    with pytest.raises(InputError, match="at least one image"):
        fitted.score([])
    with pytest.raises(InputError, match="needs at least"):
        ScopeModel.fit([x] * 4, ["a"] * 4)
    with pytest.raises(InputError, match="alpha"):
        ScopeModel.fit([x] * 20, ["a"] * 20, alpha=0.7)
    with pytest.raises(InputError, match="thumbnail"):
        request_inputs(np.zeros((3, D)), [None], [None])


def test_request_inputs_pool_each_image() -> None:
    rng = np.random.default_rng(5)
    thumbs = [thumbnail(_picture(0, rng)), thumbnail(_picture(1, rng))]
    got = request_inputs(np.ones((4, D)), [np.full((9, D), 2.0), None], thumbs)
    assert len(got) == 2
    assert got[0].thumb.shape == (THUMB, THUMB, 3)
    assert np.allclose(got[0].question, 1.0)
    assert np.allclose(got[0].vision, 2.0)
    assert got[1].vision is None


def test_stored_model_scores_the_same_and_tampering_is_refused(
    fitted: ScopeModel, tmp_path: Path
) -> None:
    from fleetvl.vlm.bundle_manifest import file_sha256

    path = tmp_path / "scope.npz"
    fitted.save(path)
    summary = ScopeSummary(sha256=file_sha256(path), threshold=1.0, alpha=fitted.alpha,
                           classes=fitted.classes, examples=900, fitted_on_sha256="0" * 64,
                           cross_fitted_false_alarm=0.02)  # fmt: skip
    cal = Calibration(bundle_digest="d", created="now", examples=900, base_accuracy=0.9,
                      signals={}, out_of_scope=summary)  # fmt: skip
    cal.save(tmp_path / CALIBRATION_FILE)
    loaded = load_scope(tmp_path, load_calibration(tmp_path))
    assert loaded is not None
    assert loaded.classes == sorted(CLASSES)
    rng = np.random.default_rng(6)
    xs = [_inputs(i % 3, rng) for i in range(30)]
    assert np.allclose(loaded.scores(xs), fitted.scores(xs), rtol=1e-4)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        load_scope(tmp_path, load_calibration(tmp_path))
    assert load_scope(tmp_path, None) is None
    meta = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert meta["out_of_scope"]["classes"] == sorted(CLASSES)


def test_the_camera_layout_turns_with_the_image() -> None:
    """Turning the thumbnail a quarter turn permutes its camera vector exactly (the camera
    part compares all four turns, so a sideways camera costs nothing)."""
    from fleetvl.vlm.camera import TURNS, camera_vector

    t = np.random.default_rng(7).integers(0, 256, (THUMB, THUMB, 3), dtype=np.uint8)
    upright = camera_vector(t)
    for k in (1, 2, 3):
        turned = camera_vector(np.ascontiguousarray(np.rot90(t, k)))
        assert min(np.abs(upright[TURNS[j]] - turned).max() for j in range(4)) < 1e-5


def test_flat_and_streaked_frames_have_finite_camera_vectors() -> None:
    """A dead feed (one colour everywhere) must score, not crash the request; a frame smeared
    in one direction reads as less sharp along it than across it."""
    from fleetvl.vlm.camera import _GLOBAL, camera_vector

    for value in (0, 1, 128, 254, 255):
        v = camera_vector(np.full((THUMB, THUMB, 3), value, dtype=np.uint8))
        assert np.isfinite(v).all(), value
    rng = np.random.default_rng(3)
    sharp = rng.integers(0, 256, (THUMB, THUMB, 3), dtype=np.uint8)
    # Averaging along rows (a horizontal smear) removes the horizontal differences.
    smeared = np.repeat(sharp.mean(axis=1, keepdims=True), THUMB, axis=1).astype(np.uint8)
    smeared = (smeared + rng.integers(0, 3, smeared.shape)).astype(np.uint8)
    weakest = _GLOBAL - 4  # the sharpness in the weakest direction, full scale
    assert camera_vector(smeared)[weakest] < camera_vector(sharp)[weakest] - 2
