"""Camera faults: honest labels, determinism, and faults that do what they say."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fleetvl_tools.fleetdata import generate
from fleetvl_tools.fleetdata.faults import (
    KINDS,
    MILD_KINDS,
    SCENE_KIND,
    SEVERE_KINDS,
    apply_fault,
    fault_image,
)


def _sample(i: int = 0):
    return list(generate("test", i + 1))[i]


def _detail(img) -> float:
    """Edge strength at a quarter of the resolution (4x4 boxes average the sensor noise
    away): what blur and darkness remove."""
    small = img.convert("L").resize((img.size[0] // 4, img.size[1] // 4), Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.float64)
    return float(np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean())


def test_every_kind_has_a_band_and_labels_follow_it() -> None:
    s = _sample()
    for kind in KINDS:
        assert kind in MILD_KINDS or kind in SEVERE_KINDS
        for severe in (False, True):
            if (severe and kind not in SEVERE_KINDS) or (not severe and kind not in MILD_KINDS):
                with pytest.raises(ValueError, match="has no"):
                    apply_fault(s, kind, np.random.default_rng(0), severe=severe)
                continue
            f = apply_fault(s, kind, np.random.default_rng(0), severe=severe)
            assert f.answerable is (not severe)
            assert f.fault is not None
            assert f.fault.kind == kind
            assert f.record("x.png")["answerable"] is (not severe)
            assert f.question == s.question
            assert f.answer == s.answer
    assert "rotation" not in SEVERE_KINDS  # a turned view still shows its answer
    with pytest.raises(ValueError, match="unknown camera fault"):
        fault_image(s.image, "fire", np.random.default_rng(0), severe=True)


def test_faults_are_deterministic_and_change_the_image() -> None:
    s = _sample(1)
    for kind in ("blur", "glare", "dark", "crop", "rotation"):
        a = apply_fault(s, kind, np.random.default_rng(5), severe=False)
        b = apply_fault(s, kind, np.random.default_rng(5), severe=False)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert not np.array_equal(np.asarray(a.image), np.asarray(s.image))


def test_severe_faults_destroy_what_mild_ones_keep() -> None:
    s = _sample(2)
    for kind in ("blur", "dark"):
        mild = apply_fault(s, kind, np.random.default_rng(1), severe=False)
        severe = apply_fault(s, kind, np.random.default_rng(1), severe=True)
        # The camera's own noise stays; the scene's edges go.
        assert _detail(severe.image) < 0.6 * _detail(mild.image), kind
    cover = np.asarray(apply_fault(s, "cover", np.random.default_rng(2), severe=True).image)
    assert cover.std(axis=2).mean() < np.asarray(s.image).std(axis=2).mean()


def test_other_scene_shows_another_kind_of_scene() -> None:
    for i in range(8):
        s = _sample(i)
        f = apply_fault(s, "other_scene", np.random.default_rng(i), severe=True)
        assert SCENE_KIND[f.params["shown"]] != SCENE_KIND[s.task]
        assert not f.answerable


def test_generated_faults_are_mild_and_leave_the_scenes_alone() -> None:
    clean = list(generate("train", 60, seed=4))
    faulty = list(generate("train", 60, seed=4, faults=0.5))
    hit = [f for f in faulty if f.fault is not None]
    assert 15 <= len(hit) <= 45
    assert all(f.answerable for f in faulty)
    for c, f in zip(clean, faulty, strict=True):
        assert (c.question, c.answer) == (f.question, f.answer)
        if f.fault is None:
            assert np.array_equal(np.asarray(c.image), np.asarray(f.image))
    with pytest.raises(ValueError, match="share"):
        list(generate("train", 1, faults=1.5))
