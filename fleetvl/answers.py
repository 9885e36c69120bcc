"""When a generated answer counts as right: one rule for calibration, the cascade benchmark
and the demo's grading, so a gate is calibrated on the same notion of "right" it is judged by.

Short answers ("closed", "60", "row 2") compare after lower-casing, trimming surrounding
spaces and punctuation (a model may end with "." or quote its answer) and collapsing inner
whitespace. Inner punctuation is kept: "1.5" and "15" differ.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["answer_matches", "normalize_answer"]

_EDGE_PUNCTUATION = ".,;:!?\"'"


def normalize_answer(text: str) -> str:
    """``text`` lower-cased, without surrounding spaces or punctuation, inner runs of
    whitespace as one space."""
    return re.sub(r"\s+", " ", text.strip().strip(_EDGE_PUNCTUATION).strip().lower())


def answer_matches(
    answer: str, expected: str, match: Literal["exact", "contains"] = "exact"
) -> bool:
    """Whether ``answer`` is ``expected`` (``exact``) or contains it (``contains``; an empty
    expected answer matches nothing), both normalised."""
    a, e = normalize_answer(answer), normalize_answer(expected)
    if match == "exact":
        return a == e
    if match == "contains":
        return bool(e) and e in a
    raise ValueError(f"match must be 'exact' or 'contains', not {match!r}")
