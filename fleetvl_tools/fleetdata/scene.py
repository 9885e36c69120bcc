"""The result of drawing one scene, before camera degradations."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

__all__ = ["Scene"]


@dataclass
class Scene:
    image: Image.Image
    question: str
    answer: str
    params: dict[str, object] = field(default_factory=dict)
