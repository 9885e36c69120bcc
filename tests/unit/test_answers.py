"""The one rule that grades answers for calibration, the cascade benchmark and the demo."""

from __future__ import annotations

import pytest

from fleetvl.answers import answer_matches, normalize_answer


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("60", "60"),
        (" Closed.", "closed"),  # case, surrounding space and a final full stop
        ('"row 2"', "row 2"),
        ("row   2\n", "Row 2"),  # inner runs of whitespace
    ],
)
def test_the_same_answer_written_differently_is_right(answer: str, expected: str) -> None:
    assert answer_matches(answer, expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("1.5", "15"),  # inner punctuation is part of a reading
        ("60 bar", "60"),
        ("", "60"),
        ("row 2", "row 3"),
    ],
)
def test_a_different_answer_is_wrong(answer: str, expected: str) -> None:
    assert not answer_matches(answer, expected)


def test_contains_finds_the_expected_answer_inside_a_sentence() -> None:
    assert answer_matches("The gauge reads 60 bar.", "60", "contains")
    assert not answer_matches("The gauge reads 70 bar.", "60", "contains")
    assert not answer_matches("anything", "  ", "contains")  # an empty truth matches nothing


def test_an_unknown_match_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="exact"):
        answer_matches("60", "60", "fuzzy")  # type: ignore[arg-type]


def test_normalized_form() -> None:
    assert normalize_answer("  Row\t2. ") == "row 2"
