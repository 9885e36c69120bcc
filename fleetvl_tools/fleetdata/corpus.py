"""Text the fleet models' tokenizer learns its merges from: every question and answer form."""

from __future__ import annotations

from fleetvl_tools.fleetdata.generator import TASKS, generate

__all__ = ["corpus_text"]


def corpus_text(per_task: int = 40) -> str:
    """Questions and answers of ``per_task`` samples of every task (small images: fast)."""
    lines = [
        f"{s.question}\n{s.answer}"
        for s in generate("train", per_task * len(TASKS), seed=12345, size=56)
    ]
    return "\n".join(lines) + "\n"
