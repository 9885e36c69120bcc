"""Substation scenes: analog gauge, breaker position, thermal phases, oil sight glass, meter.

Each scene draws a clean image (clutter included) for a sampled ground truth and returns the
question, the short exact answer and the parameters the answer was derived from; the
generator applies the camera degradations afterwards.
"""

from __future__ import annotations

import math

import numpy as np

from fleetvl_tools.fleetdata._draw import canvas, jitter, text_centered
from fleetvl_tools.fleetdata.difficulty import Difficulty
from fleetvl_tools.fleetdata.scene import Scene

__all__ = ["breaker", "gauge", "oil_level", "seven_segment", "thermal"]

_GAUGE_SWEEP = (225.0, -45.0)  # degrees (maths convention) of 0 and full scale


def gauge(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    value = int(rng.integers(0, 11)) * 10
    img, draw = canvas(size, d, rng, (120, 125, 120))
    r = 0.40 * size * d.scale
    cx = size / 2 + rng.uniform(-1, 1) * (size / 2 - r - 2)
    cy = size / 2 + rng.uniform(-1, 1) * (size / 2 - r - 2)
    draw.ellipse(
        [cx - r, cy - r, cx + r, cy + r],
        fill=(240, 240, 232),
        outline=(30, 30, 30),
        width=max(1, int(r / 14)),
    )
    a0, a1 = _GAUGE_SWEEP
    for tick in range(0, 101, 10):
        a = math.radians(a0 + (a1 - a0) * tick / 100)
        inner = 0.78 if tick % 50 else 0.68
        draw.line(
            [
                (cx + inner * r * math.cos(a), cy - inner * r * math.sin(a)),
                (cx + 0.92 * r * math.cos(a), cy - 0.92 * r * math.sin(a)),
            ],
            fill=(20, 20, 20),
            width=max(1, int(r / 25)),
        )
        if tick % 50 == 0:
            text_centered(
                draw,
                (cx + 0.5 * r * math.cos(a), cy - 0.5 * r * math.sin(a)),
                str(tick),
                int(r / 4.5),
                (20, 20, 20),
            )
    angle = a0 + (a1 - a0) * value / 100
    a = math.radians(angle)
    draw.line(
        [(cx, cy), (cx + 0.85 * r * math.cos(a), cy - 0.85 * r * math.sin(a))],
        fill=(200, 20, 20),
        width=max(1, int(r / 12)),
    )
    draw.ellipse([cx - r / 10, cy - r / 10, cx + r / 10, cy + r / 10], fill=(30, 30, 30))
    question = str(
        rng.choice(
            [
                "What does the gauge read?",
                "Read the analog gauge.",
                "What value is the gauge needle pointing at?",
            ]
        )
    )
    params = {"value": value, "center": [cx, cy], "radius": r, "needle_angle_deg": angle}
    return Scene(img, question, str(value), params)


def breaker(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    n = 1 if d.level < 0.3 else int(rng.integers(2, 4))
    states = [bool(rng.integers(0, 2)) for _ in range(n)]  # True = closed
    asked = int(rng.integers(0, n))
    img, draw = canvas(size, d, rng, (150, 160, 170))
    span = size * d.scale
    x_start = (size - span) / 2
    h = 0.55 * span if n == 1 else 0.5 * size * d.scale
    top = (size - h) / 2
    blade_tips, pivots = [], []
    for i, closed in enumerate(states):
        x = x_start + span * (i + 0.5) / n
        y_top, y_bot = top + 0.15 * h, top + 0.85 * h
        w = max(2, int(span / (10 * n)))
        draw.line([(x, top), (x, y_top)], fill=(30, 30, 30), width=w)
        draw.line([(x, y_bot), (x, top + h)], fill=(30, 30, 30), width=w)
        c = max(2.0, span / (18 * n))
        draw.ellipse([x - c, y_top - c, x + c, y_top + c], fill=(30, 30, 30))
        draw.ellipse([x - c, y_bot - c, x + c, y_bot + c], fill=(30, 30, 30))
        tilt = 0.0 if closed else math.radians(rng.uniform(30, 55))
        length = y_bot - y_top
        tip = (x + length * math.sin(tilt), y_bot - length * math.cos(tilt))
        draw.line([(x, y_bot), tip], fill=(230, 120, 20), width=w)
        blade_tips.append(list(tip))
        pivots.append([x, y_bot])
        if n > 1:
            text_centered(
                draw, (x, top + h + 0.07 * size), str(i + 1), int(size / 10), (10, 10, 10)
            )
    if n == 1:
        question = "Is the breaker open or closed?"
    else:
        question = f"Is breaker {asked + 1} open or closed?"
    answer = "closed" if states[asked] else "open"
    params = {
        "states": ["closed" if s else "open" for s in states],
        "asked": asked + 1,
        "blade_tips": blade_tips,
        "pivots": pivots,
    }
    return Scene(img, question, answer, params)


def _ironbow(t: float) -> tuple[int, int, int]:
    """Thermal-camera palette: cold navy -> purple -> red -> orange -> pale yellow."""
    stops = np.array(
        [[10, 10, 60], [90, 10, 140], [200, 40, 70], [245, 140, 10], [255, 250, 190]],
        dtype=np.float64,
    )
    x = float(np.clip(t, 0.0, 1.0)) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    c = stops[i] + (stops[i + 1] - stops[i]) * (x - i)
    return int(c[0]), int(c[1]), int(c[2])


def thermal(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    hot = int(rng.integers(0, 3))
    # Harder images have phases closer in temperature.
    gap = 0.05 + 0.30 * (1.0 - d.level)
    t_hot = rng.uniform(0.55 + gap / 2, 0.95)
    temps = [t_hot if i == hot else t_hot - gap - rng.uniform(0, 0.15) for i in range(3)]
    img, draw = canvas(size, d, rng, _ironbow(0.08))
    span = 0.8 * size * d.scale
    x0 = (size - span) / 2
    h = 0.6 * size * d.scale
    top = (size - h) / 2 + 0.05 * size
    centers = []
    for i, t in enumerate(temps):
        x = x0 + span * (i + 0.5) / 3
        w = span / 9
        for k in range(6):  # insulator sheds, cooler towards the base
            y = top + h * k / 6
            shade = _ironbow(t - 0.03 * k)
            draw.rounded_rectangle(
                [x - w, y, x + w, y + h / 6 - 1], radius=max(1, w / 3), fill=shade
            )
        centers.append([x, top + h / 2])
        text_centered(draw, (x, top - 0.08 * size), "ABC"[i], int(size / 11), (235, 235, 235))
    question = str(
        rng.choice(
            [
                "Which phase is hottest: A, B or C?",
                "In this thermal image, which phase runs hottest?",
            ]
        )
    )
    params = {"temperatures": [round(float(t), 4) for t in temps], "centers": centers, "gap": gap}
    return Scene(img, question, "ABC"[hot], params)


def oil_level(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    lo, hi = 0.3, 0.75  # MIN and MAX marks, as fractions of the glass from the bottom
    answer = str(rng.choice(["low", "normal", "high"]))
    # Harder images put the oil closer to a mark.
    margin = rng.uniform(0.03, 0.08) if d.level > 0.5 else rng.uniform(0.08, 0.2)
    if answer == "low":
        level = lo - margin
    elif answer == "high":
        level = min(hi + margin, 0.97)
    else:
        level = float(rng.choice([lo + margin, hi - margin]))
    img, draw = canvas(size, d, rng, (110, 115, 105))
    h = 0.75 * size * d.scale
    w = 0.16 * size * d.scale
    x = size / 2 + rng.uniform(-0.15, 0.15) * size
    top = (size - h) / 2
    bottom = top + h
    draw.rectangle([x - w / 2 - 3, top - 3, x + w / 2 + 3, bottom + 3], fill=(60, 60, 60))
    draw.rectangle([x - w / 2, top, x + w / 2, bottom], fill=(215, 225, 225))
    oil_top = bottom - level * h
    draw.rectangle([x - w / 2, oil_top, x + w / 2, bottom], fill=jitter((160, 95, 15), 10, rng))
    for frac, label in ((lo, "MIN"), (hi, "MAX")):
        y = bottom - frac * h
        draw.line([(x + w / 2, y), (x + w / 2 + 0.08 * size, y)], fill=(10, 10, 10), width=2)
        text_centered(draw, (x + w / 2 + 0.17 * size, y), label, int(size / 13), (10, 10, 10))
    question = str(
        rng.choice(
            [
                "What is the oil level in the sight glass: low, normal or high?",
                "Is the transformer oil level low, normal or high?",
            ]
        )
    )
    params = {
        "level": round(float(level), 4),
        "min_mark": lo,
        "max_mark": hi,
        "glass": [x - w / 2, top, x + w / 2, bottom],
    }
    return Scene(img, question, answer, params)


# Segments a..g lit for each digit.
SEGMENTS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abdeg",
    "3": "abcdg",
    "4": "bcfg",
    "5": "acdfg",
    "6": "acdefg",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
}


def _segment_boxes(x: float, y: float, w: float, h: float) -> dict[str, list[float]]:
    t = max(1.5, w / 5)
    m = y + h / 2
    return {
        "a": [x + t, y, x + w - t, y + t],
        "b": [x + w - t, y + t, x + w, m - t / 2],
        "c": [x + w - t, m + t / 2, x + w, y + h - t],
        "d": [x + t, y + h - t, x + w - t, y + h],
        "e": [x, m + t / 2, x + t, y + h - t],
        "f": [x, y + t, x + t, m - t / 2],
        "g": [x + t, m - t / 2, x + w - t, m + t / 2],
    }


def seven_segment(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    value = int(rng.integers(0, 1000))
    text = f"{value:>3d}"
    img, draw = canvas(size, d, rng, (90, 95, 100))
    dw = 0.2 * size * d.scale
    dh = 1.8 * dw
    gap = 0.35 * dw
    total = 3 * dw + 2 * gap
    x0 = (size - total) / 2 + rng.uniform(-0.1, 0.1) * size * (1 - d.scale + 0.3)
    y0 = (size - dh) / 2 + rng.uniform(-0.1, 0.1) * size
    draw.rectangle([x0 - gap, y0 - gap, x0 + total + gap, y0 + dh + gap], fill=(20, 22, 20))
    lit = jitter((255, 60, 40), 8, rng) if rng.integers(0, 2) else jitter((60, 255, 90), 8, rng)
    # Unlit segments glow faintly; brighter ghosts on harder images.
    ghost = tuple(int(20 + (c - 20) * (0.08 + 0.22 * d.level)) for c in lit)
    boxes = []
    for i, ch in enumerate(text):
        segs = _segment_boxes(x0 + i * (dw + gap), y0, dw, dh)
        boxes.append(segs)
        on = SEGMENTS.get(ch, "")
        for name, box in segs.items():
            draw.rectangle(box, fill=lit if name in on else ghost)
    question = str(
        rng.choice(
            [
                "What does the meter display read?",
                "Read the number on the seven-segment display.",
            ]
        )
    )
    params = {"value": value, "digit_boxes": boxes}
    return Scene(img, question, str(value), params)
