"""Fleet VQA: rendered substation and retail images with questions and exact short answers.

Deterministic and seeded (see :mod:`fleetvl_tools.fleetdata.generator`); imports only NumPy and
Pillow, so the training script can use it on a box without the serving stack.
"""

from fleetvl_tools.fleetdata.difficulty import Difficulty
from fleetvl_tools.fleetdata.generator import (
    DEFAULT_SIZE,
    SPLITS,
    TASKS,
    Sample,
    generate,
    make_sample,
)
from fleetvl_tools.fleetdata.writer import write_split

__all__ = [
    "DEFAULT_SIZE",
    "SPLITS",
    "TASKS",
    "Difficulty",
    "Sample",
    "generate",
    "make_sample",
    "write_split",
]
