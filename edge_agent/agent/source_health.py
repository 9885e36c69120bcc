"""Recent out-of-scope verdicts per image source, for the site's health report.

A source is what a request names in its ``source`` field (a camera, an inspection app);
requests that name none share the source ``""``. For each, the agent keeps the verdicts of
its last ``window`` images (out of scope or not, and which part of the score said so). The
control client sends a snapshot with every heartbeat; the controller turns a run of
out-of-scope frames into a site health alert ("cam-3: 20 of the last 25 frames out of scope").

It also remembers each named source's latest frame (the images' digests) and since when the
source has sent nothing else: a camera whose feed froze keeps delivering the same picture,
which the out-of-scope score cannot tell from a live one (see :meth:`SourceHealth.unchanged`).

Bounded: at most ``max_sources`` sources are kept, the least recently seen dropped first, so a
client that invents a source per request cannot grow the agent's memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SourceHealth", "SourceStatus"]


@dataclass(frozen=True)
class SourceStatus:
    source: str
    frames: int  # verdicts kept (at most the window)
    out_of_scope: int  # of those, out of scope
    last_part: str  # the score part of the latest out-of-scope frame ("" if none)
    updated: float  # unix time of the latest frame


@dataclass
class _Recent:
    verdicts: deque[bool]
    last_part: str = ""
    updated: float = 0.0
    frame: str = ""  # the latest frame's image digests
    frame_since: float = 0.0  # when that frame was first sent
    frame_count: int = 0  # times sent since


class SourceHealth:
    def __init__(
        self, window: int = 25, max_sources: int = 256, clock: Callable[[], float] = time.time
    ) -> None:
        if window < 1 or max_sources < 1:
            raise ValueError("window and max_sources must be at least 1")
        self.window = window
        self.max_sources = max_sources
        self._clock = clock
        self._sources: OrderedDict[str, _Recent] = OrderedDict()
        self._lock = threading.Lock()

    def unchanged(self, source: str | None, frame: str, min_frames: int = 3) -> float:
        """Note that ``source`` sent ``frame`` now; return for how many seconds it has sent
        nothing else (0.0 until it has sent the frame ``min_frames`` times: a client that
        asks several questions about one snapshot, or retries, is not a frozen camera).
        Unnamed sources and requests without images are never judged (0.0)."""
        if not source or not frame:
            return 0.0
        now = self._clock()
        with self._lock:
            recent = self._touch(source)
            if recent.frame != frame:
                recent.frame, recent.frame_since, recent.frame_count = frame, now, 0
            recent.frame_count += 1
            return now - recent.frame_since if recent.frame_count >= min_frames else 0.0

    def _touch(self, key: str) -> _Recent:
        """The source's record, moved to the most recently seen end (the lock is held)."""
        recent = self._sources.pop(key, None) or _Recent(deque(maxlen=self.window))
        self._sources[key] = recent
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        return recent

    def record(self, source: str | None, out_of_scope: bool, part: str | None = None) -> None:
        """One image's verdict (call once per scored request)."""
        key = source or ""
        with self._lock:
            recent = self._touch(key)
            recent.verdicts.append(out_of_scope)
            if out_of_scope and part:
                recent.last_part = part
            recent.updated = self._clock()

    def snapshot(self) -> list[SourceStatus]:
        """Every kept source, most recently seen last."""
        with self._lock:
            return [
                SourceStatus(k, len(r.verdicts), sum(r.verdicts), r.last_part, r.updated)
                for k, r in self._sources.items()
            ]
