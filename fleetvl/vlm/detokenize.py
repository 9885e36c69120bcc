"""Streaming text out of token ids, shared by the edge and cloud engines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer", "find_stop"]


class IncrementalDetokenizer:
    """Incremental text for byte-level BPE: decodes a short window per step, not the whole
    answer, and holds back text while a multi-byte character is incomplete."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._prefix = 0
        self._read = 0

    def push(self, ids: list[int]) -> str:
        before = self._decode(ids[self._prefix : self._read])
        after = self._decode(ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(ids)
            return after[len(before) :]
        return ""


def find_stop(text: str, stops: Sequence[str], scan_from: int) -> int | None:
    """Index where the earliest stop sequence starts, looking only at text not yet emitted."""
    best = None
    for s in stops:
        i = text.find(s, max(0, scan_from - len(s) + 1))
        if i != -1 and (best is None or i < best):
            best = i
    return best
