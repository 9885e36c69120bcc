"""Deterministic, seeded fleet VQA samples and their splits.

Sample ``i`` of a split is drawn from its own generator seeded with (split, seed, i): a
sample never depends on the ones before it, so splits can be generated in parallel, in any
order, or partially, and still be identical. Splits use disjoint seed streams: ``train``,
``val`` (model selection), ``test``, ``calib`` (what ``fleetvl calibrate`` fits thresholds
and the out-of-scope score on) and ``heldout`` (fresh data the gate benchmark only reports
on: nothing is trained, fitted or chosen on it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fleetvl_tools.fleetdata import retail, substation
from fleetvl_tools.fleetdata.difficulty import Difficulty, degrade
from fleetvl_tools.fleetdata.faults import DEV_KINDS, MILD_KINDS, SCENE_KIND, Fault, apply_fault
from fleetvl_tools.fleetdata.scene import Scene

__all__ = [
    "SPLITS",
    "TASKS",
    "TRAIN_FAULTS",
    "Sample",
    "generate",
    "make_sample",
    "sample_level",
]

SceneFn = Callable[[np.random.Generator, Difficulty, int], Scene]

# task -> (site, scene function)
TASKS: dict[str, tuple[str, SceneFn]] = {
    "gauge": ("substation", substation.gauge),
    "breaker": ("substation", substation.breaker),
    "thermal": ("substation", substation.thermal),
    "oil_level": ("substation", substation.oil_level),
    "seven_segment": ("substation", substation.seven_segment),
    "empty_row": ("retail", retail.empty_row),
    "colour_count": ("retail", retail.colour_count),
    "missing_tags": ("retail", retail.missing_tags),
}

SPLITS = {"train": 1, "val": 2, "test": 3, "calib": 4, "heldout": 5}
# Mild faults training and calibration draw (held-out kinds never: see faults.py); rotation
# twice, since reading a turned scene is the most to learn.
TRAIN_FAULTS = (*(k for k in MILD_KINDS if k in DEV_KINDS), "rotation")
_FAULT_STREAM = 7  # a second generator per sample, so faults leave the scene draw unchanged
DEFAULT_SIZE = 168  # 6 x 28: a 12 x 12 patch grid, 36 image tokens after the merger


@dataclass
class Sample:
    """One question about one rendered image, with its exact short answer."""

    id: str
    split: str
    task: str
    site: str
    question: str
    answer: str
    difficulty: Difficulty
    image: Image.Image
    params: dict[str, object] = field(default_factory=dict)
    fault: Fault | None = None  # a camera fault applied to the image (faults.py)

    @property
    def answerable(self) -> bool:
        """Whether ``answer`` can still be read from ``image`` (False under a severe fault)."""
        return self.fault is None or self.fault.answerable

    def record(self, image_path: str) -> dict[str, object]:
        """The JSONL line of this sample (the format ``fleetvl calibrate`` reads)."""
        return {
            "id": self.id,
            "images": [image_path],
            "question": self.question,
            "answer": self.answer,
            "task": self.task,
            "scene": SCENE_KIND[self.task],
            "site": self.site,
            "level": round(self.difficulty.level, 4),
            "difficulty": self.difficulty.as_dict(),
            "answerable": self.answerable,
            **({"fault": self.fault.as_dict()} if self.fault else {}),
        }


def sample_level(rng: np.random.Generator) -> float:
    """Most questions are easy; 30% are hard enough to trouble a small model (level 1, where
    a question can become unanswerable, is left to tests and explicit calls)."""
    if rng.random() < 0.7:
        return float(rng.uniform(0.0, 0.4))
    return float(rng.uniform(0.4, 0.9))


def make_sample(
    task: str,
    rng: np.random.Generator,
    *,
    level: float | None = None,
    difficulty: Difficulty | None = None,
    size: int = DEFAULT_SIZE,
    sample_id: str = "",
    split: str = "",
) -> Sample:
    """Draw one sample of ``task``; ``difficulty`` overrides the knobs ``level`` implies."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    site, scene_fn = TASKS[task]
    if difficulty is None:
        difficulty = Difficulty.at(sample_level(rng) if level is None else level, rng)
    scene = scene_fn(rng, difficulty, size)
    image = degrade(scene.image, difficulty, rng)
    return Sample(
        id=sample_id,
        split=split,
        task=task,
        site=site,
        question=scene.question,
        answer=scene.answer,
        difficulty=difficulty,
        image=image,
        params=scene.params,
    )


def generate(
    split: str,
    n: int,
    *,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    tasks: Sequence[str] | None = None,
    start: int = 0,
    faults: float = 0.0,
) -> Iterator[Sample]:
    """Samples ``start .. start + n - 1`` of ``split``; tasks rotate so splits are balanced.

    ``faults``: the share of samples that get a mild (still answerable) camera fault, drawn
    from ``TRAIN_FAULTS`` on a stream of its own (the scenes are those of ``faults=0``).
    """
    if not 0.0 <= faults <= 1.0:
        raise ValueError(f"faults={faults} must be a share between 0 and 1")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    if size % 28:
        raise ValueError(f"image size {size} must be a multiple of 28 (patch 14 x merge 2)")
    names = list(tasks) if tasks else list(TASKS)
    for i in range(start, start + n):
        rng = np.random.default_rng([SPLITS[split], seed, i])
        sample = make_sample(
            names[i % len(names)], rng, size=size, sample_id=f"{split}-{seed}-{i:06d}", split=split
        )
        if faults:
            frng = np.random.default_rng([SPLITS[split], seed, i, _FAULT_STREAM])
            if frng.random() < faults:
                kind = str(frng.choice(TRAIN_FAULTS))
                sample = apply_fault(sample, kind, frng, severe=False)
        yield sample
