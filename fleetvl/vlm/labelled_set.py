"""The labelled set ``fleetvl calibrate`` reads: JSONL, one question per line.

Each line: ``{"image": "a.png"}`` or ``{"images": [...]}`` (paths relative to the file),
``"question"``, ``"answer"`` (the expected answer), and optionally ``"scene"`` (the class
the out-of-scope score matches questions to; without it every example is one class) and
``"answerable"`` (``false``: not in scope, skipped by calibration). ``fleetvl data write``
writes this format. Shared by the edge bundle's and the cloud model's calibration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from fleetvl.errors import InputError

__all__ = ["LabelledExample", "read_labelled_set"]


class LabelledExample(TypedDict):
    """One line of a labelled set, its images read."""

    images: list[bytes]
    question: str
    answer: str
    scene: str  # "all" when the line names none
    answerable: bool


def read_labelled_set(path: Path) -> list[LabelledExample]:
    """The examples with image bytes loaded. Raises InputError naming the bad line."""
    out: list[LabelledExample] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            paths = ex.get("images") or ([ex["image"]] if ex.get("image") else [])
            images = [(path.parent / p).read_bytes() for p in paths]
            out.append({"images": images, "question": str(ex["question"]),
                        "answer": str(ex["answer"]), "scene": str(ex.get("scene") or "all"),
                        "answerable": bool(ex.get("answerable", True))})  # fmt: skip
        except (json.JSONDecodeError, KeyError, OSError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}:{n}: not a labelled example ({exc})") from None
    if not out:
        raise InputError(f"{path} holds no examples")
    return out
