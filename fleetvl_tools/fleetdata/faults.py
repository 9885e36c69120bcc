"""Camera faults: what a site camera delivers when something breaks, with honest labels.

A fault takes a rendered sample and changes its image the way a failing camera would: out of
focus, blinded by glare, dark, covered, knocked sideways, pointed elsewhere, or showing a
scene of another kind than the question asks about. Every faulted sample says whether its
question is still **answerable** from the pixels:

* ``mild`` faults stay inside what a working camera delivers (slight defocus, a small
  reflection, a dim scene, a nudged view) or change only how the scene is framed (a tilt, a
  camera mounted sideways or upside down: the equipment is the same, so is its answer); the
  answer is still plainly visible and the sample keeps it. Training draws them as
  augmentation, calibration counts them as in-scope.
* ``severe`` faults destroy the answer for every task (the detail is gone, the scene is
  upside down or out of frame, or it is another scene); the sample keeps the scene's answer
  only for reference and ``answerable`` is False. A released answer to one is wrong by
  definition, even if it happens to match.

Only the two bands are drawn, never the ambiguous middle, so a label is never a judgement
call. ``HELD_OUT_KINDS`` exist for the gate benchmark only: no training or calibration draw
uses them, so they show how the out-of-scope score does on faults nobody tuned it on.

Every function is deterministic given its ``rng``; NumPy and Pillow only (the GPU training
box has no serving stack).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "DEV_KINDS",
    "HELD_OUT_KINDS",
    "KINDS",
    "MILD_KINDS",
    "SCENE_KIND",
    "SEVERE_KINDS",
    "Fault",
    "apply_fault",
    "fault_image",
]

# Faults the score and the thresholds were developed against. motion_blur was held out until
# its held-out result was reported (session 6: the score missed it); it was then developed
# against, and rain and night_noise, defined before any score saw them, took its place.
DEV_KINDS = ("blur", "glare", "dark", "cover", "rotation", "crop", "other_scene", "motion_blur")
# Faults only the benchmark draws, and only to report (never to choose anything).
HELD_OUT_KINDS = ("fog", "rain", "night_noise")
KINDS = DEV_KINDS + HELD_OUT_KINDS
# Kinds with a mild (answerable) band; cover and other_scene are severe only, rotation is
# mild only (a turned view still shows the answer).
MILD_KINDS = ("blur", "glare", "dark", "rotation", "crop", "motion_blur", "fog", "rain",
              "night_noise")  # fmt: skip
SEVERE_KINDS = ("blur", "glare", "dark", "cover", "crop", "other_scene", "motion_blur", "fog",
                "rain", "night_noise")  # fmt: skip

# What a camera looks at, per task: the five substation tasks each have their own piece of
# equipment, the three retail tasks share one shelving unit. A question about one scene kind
# on an image of another ("other_scene") is unanswerable; a retail question on any shelf is not.
SCENE_KIND = {
    "gauge": "gauge",
    "breaker": "breaker",
    "thermal": "thermal",
    "oil_level": "oil_level",
    "seven_segment": "seven_segment",
    "empty_row": "shelf",
    "colour_count": "shelf",
    "missing_tags": "shelf",
}


@dataclass(frozen=True)
class Fault:
    """What was done to an image, and whether its question can still be answered."""

    kind: str
    severe: bool
    params: dict[str, float]

    @property
    def answerable(self) -> bool:
        return not self.severe

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "severe": self.severe, "answerable": self.answerable,
                **{k: round(float(v), 4) for k, v in self.params.items()}}  # fmt: skip


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(np.float32)


def _img(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def _sensor(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera's own noise, on top of whatever went wrong."""
    return a + rng.normal(0.0, rng.uniform(2.0, 6.0), a.shape).astype(np.float32)


def _border_colour(img: Image.Image) -> tuple[int, int, int]:
    a = np.asarray(img.convert("RGB"))
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    r, g, b = (int(c) for c in edge.mean(0))
    return r, g, b


def _blur(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    s = img.size[0] / 168
    sigma = rng.uniform(25.0, 40.0) * s if severe else rng.uniform(1.0, 3.0) * s
    return _arr(img.filter(ImageFilter.GaussianBlur(sigma))), {"sigma_px": sigma}


def _glare(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    a = _arr(img)
    n = img.size[0]
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    if severe:
        # Facing a light: a saturated bloom over the middle of the view and a washed-out rest.
        cx, cy = (n / 2 + rng.uniform(-0.15, 0.15, 2) * n).tolist()
        radius, peak, veil = rng.uniform(0.45, 0.7) * n, 1.0, rng.uniform(0.55, 0.8)
    else:
        # A small reflection near the edge of the view.
        ang = rng.uniform(0, 2 * np.pi)
        cx, cy = n / 2 + 0.42 * n * np.cos(ang), n / 2 + 0.42 * n * np.sin(ang)
        radius, peak, veil = rng.uniform(0.06, 0.14) * n, rng.uniform(0.5, 0.9), rng.uniform(0, 0.1)
    bloom = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (radius / 2) ** 2))
    m = np.clip(1.4 * peak * bloom, 0, 1)[..., None]
    a = a * (1 - veil) + 235 * veil
    return a * (1 - m) + 255 * m, {"radius_frac": radius / n, "veil": veil}


def _dark(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    exposure = rng.uniform(0.01, 0.05) if severe else rng.uniform(0.3, 0.6)
    # An 8-bit sensor: the dim signal is quantized before its noise is added.
    return np.round(_arr(img) * exposure), {"exposure": exposure}


def _cover(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    # Severe only (a lens cap, a hand, a panel in front of the camera).
    a = _arr(img)
    n = img.size[0]
    frac = rng.uniform(0.8, 0.97)
    k = int(round(frac * n))
    colour = rng.uniform(10, 90, 3).astype(np.float32)
    side = int(rng.integers(0, 4))
    view = {0: a[:k], 1: a[n - k :], 2: a[:, :k], 3: a[:, n - k :]}[side]
    view[...] = colour + rng.normal(0, 4, view.shape).astype(np.float32)  # a textured cover
    return a, {"covered_frac": frac}


def _rotation(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    # Mild only: the scene (and its answer: the shelf's top row, the glass's MAX mark) turns
    # with the camera; half are tilts, half a camera mounted sideways or upside down.
    del severe
    if rng.random() < 0.5:
        k = int(rng.integers(1, 4))
        turned = img.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                Image.Transpose.ROTATE_270][k - 1])  # fmt: skip
        return _arr(turned), {"degrees": 90.0 * k}
    deg = float(rng.uniform(3.0, 12.0) * rng.choice([-1, 1]))
    turned = img.rotate(deg, resample=Image.Resampling.BILINEAR, fillcolor=_border_colour(img))
    return _arr(turned), {"degrees": deg}


def _crop(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    n = img.size[0]
    if severe:
        # Pointed away: the view holds one corner of the scene, zoomed in.
        view = rng.uniform(0.2, 0.35) * n
        x = float(rng.choice([0.0, n - view]))
        y = float(rng.choice([0.0, n - view]))
    else:
        view = rng.uniform(0.9, 1.0) * n
        x, y = rng.uniform(0, n - view, 2).tolist()
    box = (x, y, x + view, y + view)
    out = img.resize((n, n), Image.Resampling.BICUBIC, box=box)
    return _arr(out), {"view_frac": view / n}


def _fog(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    alpha = rng.uniform(0.88, 0.96) if severe else rng.uniform(0.15, 0.35)
    grey = rng.uniform(175, 225)
    return _arr(img) * (1 - alpha) + grey * alpha, {"density": alpha}


def _motion_blur(
    img: Image.Image, rng: np.random.Generator, severe: bool
) -> tuple[np.ndarray, dict]:
    n = img.size[0]
    length = (rng.uniform(30, 50) if severe else rng.uniform(2, 5)) * n / 168
    ang = rng.uniform(0, np.pi)
    a = _arr(img)
    steps = max(2, int(round(length)))
    out = np.zeros_like(a)
    for t in np.linspace(-length / 2, length / 2, steps):
        dx, dy = int(round(t * np.cos(ang))), int(round(t * np.sin(ang)))
        out += np.roll(a, (dy, dx), axis=(0, 1))
    return out / steps, {"length_px": length}


def _rain(img: Image.Image, rng: np.random.Generator, severe: bool) -> tuple[np.ndarray, dict]:
    # Water on the lens: each drop shows the scene defocused and a little brighter, with a
    # sharp rim. Mild: a few small drops, lightly defocused (the detail shows through).
    # Severe: the lens is sheeted with drops, strongly defocused (nothing is legible).
    n = img.size[0]
    s = n / 168
    drops, (r_lo, r_hi), sigma = (
        (int(rng.integers(60, 90)), (0.12, 0.22), rng.uniform(18.0, 28.0) * s) if severe
        else (int(rng.integers(3, 7)), (0.03, 0.06), rng.uniform(1.0, 2.0) * s)
    )  # fmt: skip
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    mask = np.zeros((n, n), dtype=bool)
    for _ in range(drops):
        cx, cy = rng.uniform(0, n, 2)
        r = rng.uniform(r_lo, r_hi) * n
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    wet = _arr(img.filter(ImageFilter.GaussianBlur(sigma))) * 1.08 + 6
    a = np.where(mask[..., None], wet, _arr(img))
    return a, {"wet_frac": float(mask.mean()), "sigma_px": sigma}


def _night_noise(
    img: Image.Image, rng: np.random.Generator, severe: bool
) -> tuple[np.ndarray, dict]:
    # A camera at night turns its gain up: a dim scene under strong sensor noise. Severe: the
    # signal is a few grey levels under noise many times larger (and clipped at black).
    exposure, sigma = ((rng.uniform(0.04, 0.08), rng.uniform(60.0, 90.0)) if severe
                       else (rng.uniform(0.6, 0.85), rng.uniform(6.0, 12.0)))  # fmt: skip
    a = _arr(img) * exposure
    a = a + rng.normal(0.0, sigma, a.shape).astype(np.float32)
    return a, {"exposure": exposure, "noise_sigma": sigma}


_FAULTS: dict[str, Callable[[Image.Image, np.random.Generator, bool], tuple[np.ndarray, dict]]] = {
    "blur": _blur,
    "glare": _glare,
    "dark": _dark,
    "cover": _cover,
    "rotation": _rotation,
    "crop": _crop,
    "fog": _fog,
    "motion_blur": _motion_blur,
    "rain": _rain,
    "night_noise": _night_noise,
}


def fault_image(
    img: Image.Image, kind: str, rng: np.random.Generator, *, severe: bool
) -> tuple[Image.Image, Fault]:
    """``img`` as a camera with fault ``kind`` would deliver it (not ``other_scene``, which
    needs another render: see :func:`apply_fault`).

    Raises:
        ValueError: unknown kind, or a mild fault of a severe-only kind.
    """
    if kind not in _FAULTS:
        raise ValueError(f"unknown camera fault {kind!r}; choose one of {', '.join(KINDS)}")
    if not severe and kind not in MILD_KINDS:
        raise ValueError(f"fault {kind!r} has no mild form; mild kinds: {', '.join(MILD_KINDS)}")
    if severe and kind not in SEVERE_KINDS:
        raise ValueError(
            f"fault {kind!r} has no severe form; severe kinds: {', '.join(SEVERE_KINDS)}"
        )
    a, params = _FAULTS[kind](img, rng, severe)
    return _img(_sensor(a, rng)), Fault(kind, severe, params)


def apply_fault(sample, kind: str, rng: np.random.Generator, *, severe: bool):  # noqa: ANN001
    """A copy of ``sample`` (:class:`fleetvl_tools.fleetdata.Sample`) whose image has the fault.

    ``other_scene`` keeps the question and shows a render of another scene kind at the same
    level (a camera pointed at the wrong equipment); it is always severe.
    """
    from fleetvl_tools.fleetdata.generator import TASKS, make_sample

    if kind == "other_scene":
        if not severe:
            raise ValueError("fault 'other_scene' has no mild form: another scene never shows "
                             "the answer")  # fmt: skip
        mine = SCENE_KIND[sample.task]
        others = sorted(t for t in TASKS if SCENE_KIND[t] != mine)
        shown = str(rng.choice(others))
        other = make_sample(shown, rng, level=sample.difficulty.level, size=sample.image.size[0])
        image = _img(_sensor(_arr(other.image), rng))
        fault = Fault("other_scene", True, {})
        return replace(sample, image=image, fault=fault, params={**sample.params, "shown": shown})
    image, fault = fault_image(sample.image, kind, rng, severe=severe)
    return replace(sample, image=image, fault=fault)
