"""Retail scenes: an empty shelf row, items of a colour on a row, missing price tags.

All three draw the same shelving unit (rows numbered from the top, products as coloured
boxes standing on the boards, a white price tag under each product slot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetvl_tools.fleetdata._draw import COLOURS, canvas, jitter
from fleetvl_tools.fleetdata.difficulty import Difficulty
from fleetvl_tools.fleetdata.scene import Scene

__all__ = ["colour_count", "empty_row", "missing_tags"]

_ORDINALS = {1: "top", 2: "second", 3: "third", 4: "fourth"}


@dataclass
class _Shelf:
    rows: list[list[str | None]]  # per row, per slot: product colour name or None (gap)
    tags: list[list[bool]]  # per row, per slot: tag present


def _draw_shelf(
    shelf: _Shelf, d: Difficulty, rng: np.random.Generator, size: int
) -> tuple[Scene, list[list[float]]]:
    img, draw = canvas(size, d, rng, (200, 195, 185))
    n_rows = len(shelf.rows)
    n_slots = len(shelf.rows[0])
    w = 0.9 * size * d.scale
    h = 0.9 * size * d.scale
    x0 = (size - w) / 2
    y0 = (size - h) / 2
    draw.rectangle([x0 - 3, y0 - 3, x0 + w + 3, y0 + h + 3], fill=(90, 70, 50))
    draw.rectangle([x0, y0, x0 + w, y0 + h], fill=(235, 232, 225))
    row_h = h / n_rows
    slot_w = w / n_slots
    others = list(COLOURS.values()) + [(150, 80, 160), (120, 120, 120), (240, 240, 240)]
    row_boxes = []
    for r, row in enumerate(shelf.rows):
        board = y0 + (r + 1) * row_h
        row_boxes.append([x0, board - row_h, x0 + w, board])
        draw.rectangle([x0, board - 0.12 * row_h, x0 + w, board], fill=(110, 85, 60))
        for s, colour in enumerate(row):
            sx = x0 + s * slot_w
            if colour is not None:
                base = COLOURS.get(colour) or others[int(rng.integers(4, len(others)))]
                ih = row_h * rng.uniform(0.55, 0.8)
                draw.rectangle(
                    [
                        sx + 0.15 * slot_w,
                        board - 0.12 * row_h - ih,
                        sx + 0.85 * slot_w,
                        board - 0.12 * row_h,
                    ],
                    fill=jitter(base, 6 + 14 * d.level, rng),
                    outline=(40, 40, 40),
                )
            if shelf.tags[r][s]:
                draw.rectangle(
                    [
                        sx + 0.25 * slot_w,
                        board - 0.11 * row_h,
                        sx + 0.75 * slot_w,
                        board + 0.04 * row_h,
                    ],
                    fill=(252, 252, 252),
                )
    return Scene(img, "", ""), row_boxes


def _stocked_row(n_slots: int, rng: np.random.Generator, fill: float) -> list[str | None]:
    names = list(COLOURS) + ["other"] * 2
    return [str(rng.choice(names)) if rng.random() < fill else None for _ in range(n_slots)]


def _shape(d: Difficulty, rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(3, 5)), int(rng.integers(4, 8))


def empty_row(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    n_rows, n_slots = _shape(d, rng)
    empty = int(rng.integers(0, n_rows))
    # Harder images have sparsely stocked rows that look almost empty.
    fill = 0.95 - 0.55 * d.level
    rows = []
    for r in range(n_rows):
        row: list[str | None] = (
            [None] * n_slots if r == empty else _stocked_row(n_slots, rng, fill)
        )
        if r != empty and all(c is None for c in row):
            row[int(rng.integers(0, n_slots))] = "other"
        rows.append(row)
    tags = [[True] * n_slots for _ in range(n_rows)]
    scene, boxes = _draw_shelf(_Shelf(rows, tags), d, rng, size)
    scene.question = str(
        rng.choice(
            [
                "Which shelf row is empty? Rows are numbered from the top.",
                "Which row of the shelf is out of stock (1 is the top row)?",
            ]
        )
    )
    scene.answer = str(empty + 1)
    scene.params = {"rows": rows, "empty_row": empty + 1, "row_boxes": boxes}
    return scene


def colour_count(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    n_rows, n_slots = _shape(d, rng)
    colour = str(rng.choice(list(COLOURS)))
    row_asked = int(rng.integers(0, n_rows))
    count = int(rng.integers(0, min(n_slots, 5) + 1))
    rows = []
    for r in range(n_rows):
        row = _stocked_row(n_slots, rng, 0.85)
        if r == row_asked:
            others = [c for c in [*COLOURS, "other"] if c != colour]
            row = [str(rng.choice(others)) if rng.random() < 0.8 else None for _ in row]
            for s in rng.choice(n_slots, size=count, replace=False):
                row[int(s)] = colour
        rows.append(row)
    tags = [[True] * n_slots for _ in range(n_rows)]
    scene, boxes = _draw_shelf(_Shelf(rows, tags), d, rng, size)
    scene.question = f"How many {colour} items are on the {_ORDINALS[row_asked + 1]} row?"
    scene.answer = str(count)
    scene.params = {"rows": rows, "colour": colour, "row": row_asked + 1, "row_boxes": boxes}
    return scene


def missing_tags(rng: np.random.Generator, d: Difficulty, size: int) -> Scene:
    n_rows, n_slots = _shape(d, rng)
    rows = [_stocked_row(n_slots, rng, 0.9) for _ in range(n_rows)]
    missing = int(rng.integers(0, 4))
    tags = [[True] * n_slots for _ in range(n_rows)]
    for flat in rng.choice(n_rows * n_slots, size=missing, replace=False):
        tags[int(flat) // n_slots][int(flat) % n_slots] = False
    scene, boxes = _draw_shelf(_Shelf(rows, tags), d, rng, size)
    scene.question = str(
        rng.choice(
            [
                "How many price tags are missing on the shelf?",
                "Count the missing price labels on this shelf.",
            ]
        )
    )
    scene.answer = str(missing)
    scene.params = {"rows": rows, "tags": tags, "missing": missing, "row_boxes": boxes}
    return scene
