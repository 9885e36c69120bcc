"""Inputs for benchmarks/gate_ood.py: out-of-scope families, camera faults, in-scope sets.

Out-of-scope families (each image asked a fleet question of the held-out split):

* ``noise``: uniform, Gaussian and blocky colour noise (a camera's broken sensor or link);
* ``flat``: white, black, grey and single-colour frames (a covered lens, a dead feed);
* ``photo_skimage`` / ``photo_sklearn`` / ``photo_matplotlib`` / ``photo_faces``: random
  crops of real photographs shipped as package data (scikit-image's sample images,
  scikit-learn's two sample photos, Matplotlib's sample photograph, and scikit-image's
  LFW face crops): a camera pointed at the wrong thing;
* ``degraded``: fleet scenes through a severe camera fault (the answer is gone: see
  :mod:`fleetvl_tools.fleetdata.faults`), every severe kind;
* ``wrong_scene``: a scene of another kind than the question is about.

``TUNED_ON`` names what the score's design was developed against; every other family and
fault kind was looked at only to report (never to choose a feature, a threshold or a model).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fleetvl_tools.fleetdata import Sample, generate, make_sample
from fleetvl_tools.fleetdata.faults import (
    DEV_KINDS,
    MILD_KINDS,
    SEVERE_KINDS,
    apply_fault,
)
from fleetvl_tools.fleetdata.generator import TASKS

__all__ = ["FAMILIES", "TUNED_ON", "Item", "degraded_kind", "family", "hard_mix", "in_scope"]

SIZE = 168
# Families and fault kinds the score's parts were designed against (see the module docstring).
TUNED_ON = {"noise", "flat", "photo_skimage", "wrong_scene", "degraded",
            *(f"kind:{k}" for k in DEV_KINDS)}  # fmt: skip
FAMILIES = ("noise", "flat", "photo_skimage", "photo_sklearn", "photo_matplotlib", "photo_faces",
            "degraded", "wrong_scene")  # fmt: skip
_SK = ("astronaut", "chelsea", "coffee", "brick", "camera", "rocket", "horse", "moon", "page",
       "text", "grass", "gravel", "immunohistochemistry", "retina", "hubble_deep_field",
       "colorwheel", "coins", "clock", "checkerboard")  # fmt: skip


@dataclass
class Item:
    """One question: ``answer`` None when the input is out of scope (no right answer)."""

    image: Image.Image
    question: str
    answer: str | None
    task: str
    kind: str = ""  # fault kind, for degraded inputs
    severe: bool = False


def in_scope(split: str, n: int, seed: int) -> list[Item]:
    """The usual level mix of ``split`` (fresh seeds: nothing trained or calibrated on them)."""
    return [Item(s.image, s.question, s.answer, s.task) for s in generate(split, n, seed=seed)]


def hard_mix(n: int, seed: int) -> list[Item]:
    """The same tasks at levels 0.85-1.0, on the held-out split's seed stream."""
    names = list(TASKS)
    out = []
    for i in range(n):
        rng = np.random.default_rng([5, seed, i, 85])
        s = make_sample(names[i % len(names)], rng, level=float(rng.uniform(0.85, 1.0)))
        out.append(Item(s.image, s.question, s.answer, s.task))
    return out


def _rgb(a: np.ndarray) -> Image.Image:
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    return Image.fromarray(a[..., :3])


def _photos(name: str) -> list[Image.Image]:
    if name == "photo_skimage":
        import skimage.data as skd

        return [_rgb(getattr(skd, n)()) for n in _SK]
    if name == "photo_sklearn":
        from sklearn.datasets import load_sample_images

        return [Image.fromarray(a) for a in load_sample_images().images]
    if name == "photo_matplotlib":
        import matplotlib

        d = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
        return [Image.open(os.path.join(d, "grace_hopper.jpg")).convert("RGB")]
    import skimage

    faces = np.load(os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy"))
    return [_rgb(f) for f in faces]


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    side = max(8, int(min(w, h) * rng.uniform(0.4, 1.0)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = img.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _noise(rng: np.random.Generator) -> Image.Image:
    k = int(rng.integers(0, 3))
    if k == 0:
        return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    if k == 1:
        a = rng.normal(rng.uniform(60, 200), rng.uniform(10, 80), (SIZE, SIZE, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    cells = int(rng.integers(4, 40))
    blocks = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((SIZE, SIZE), Image.Resampling.BILINEAR)


def _flat(rng: np.random.Generator) -> Image.Image:
    k = int(rng.integers(0, 4))
    colour = {0: (255, 255, 255), 1: (0, 0, 0), 2: (128, 128, 128)}.get(
        k, tuple(int(c) for c in rng.integers(0, 256, 3))
    )
    a = np.zeros((SIZE, SIZE, 3)) + np.asarray(colour)
    a += rng.normal(0, rng.uniform(0, 3), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _questions(n: int, seed: int) -> list[Sample]:
    return list(generate("heldout", n, seed=seed + 1000))


def family(name: str, n: int, seed: int) -> list[Item]:
    """``n`` inputs of an out-of-scope family, each asked a fleet question."""
    rng = np.random.default_rng([17, seed, FAMILIES.index(name)])
    qs = _questions(n, seed)
    if name in ("degraded", "wrong_scene"):
        kinds = [k for k in SEVERE_KINDS if k != "other_scene"] if name == "degraded" \
            else ["other_scene"]  # fmt: skip
        out = []
        for i, s in enumerate(qs):
            f = apply_fault(s, kinds[i % len(kinds)], rng, severe=True)
            out.append(Item(f.image, f.question, None, f.task, f.fault.kind, True))
        return out
    make: Callable[[int], Image.Image]
    if name == "noise":
        make = lambda _i: _noise(rng)  # noqa: E731
    elif name == "flat":
        make = lambda _i: _flat(rng)  # noqa: E731
    else:
        photos = _photos(name)
        make = lambda i: _crop(photos[i % len(photos)], rng)  # noqa: E731
    return [Item(make(i), s.question, None, "ood") for i, s in enumerate(qs)]


def degraded_kind(kind: str, n: int, seed: int) -> list[Item]:
    """``n`` held-out questions through camera fault ``kind``: half mild (answerable, the
    scene's answer) and half severe (no right answer) where the kind has both bands."""
    bands = [b for b in (False, True) if (b and kind in SEVERE_KINDS)
             or (not b and kind in MILD_KINDS)]  # fmt: skip
    rng = np.random.default_rng([23, seed, len(kind), sum(map(ord, kind))])
    out = []
    for i, s in enumerate(generate("heldout", n, seed=seed + 2000)):
        severe = bands[i % len(bands)]
        f = apply_fault(s, kind, rng, severe=severe)
        out.append(Item(f.image, f.question, None if severe else f.answer, f.task, kind, severe))
    return out
