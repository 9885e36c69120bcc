"""One backend's queue, in-flight set and schedule prediction (internal to the scheduler)."""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

from fleetvl.scheduling.items import WorkItem
from fleetvl.scheduling.predictor import LatencyPredictor

_Entry = tuple[tuple[int, float], int, WorkItem]  # (sort key, sequence number, item)


@dataclass(frozen=True)
class Placement:
    """Where a candidate would land in this backend's schedule; absolute times."""

    start: float
    completion: float
    would_break: int  # queued items of equal or higher priority pushed past their deadline
    worst_overshoot: float  # how far past its deadline the worst of those would finish


class BackendState:
    """A sorted queue (best first) and the items running on ``slots`` concurrent slots.

    Schedule prediction is list scheduling: each slot frees when its in-flight item's
    predicted service ends, and queued items take the earliest free slot in queue order. The
    service times are those predicted when an item was queued (or started), so that the
    prediction costs one pass over the queue.
    """

    def __init__(self, name: str, slots: int, predictor: LatencyPredictor) -> None:
        self.name = name
        self.slots = slots
        self.predictor = predictor
        self.queue: list[_Entry] = []
        self.running: dict[str, WorkItem] = {}

    def service_s(self, item: WorkItem) -> float:
        return self.predictor.service_s(
            item.prompt_tokens, item.image_tokens, item.max_output_tokens
        )

    def push(self, entry: _Entry) -> None:
        bisect.insort(self.queue, entry)

    def remove(self, item: WorkItem) -> bool:
        for i, (_, _, queued) in enumerate(self.queue):
            if queued is item:
                del self.queue[i]
                return True
        return False

    def _free_slots(self, now: float) -> list[float]:
        # An item running past its prediction is assumed to end now: the best guess left.
        free = [
            max(now, (it.started or now) + it.predicted_service_s) for it in self.running.values()
        ]
        free += [now] * max(self.slots - len(free), 0)
        heapq.heapify(free)
        return free

    def next_free_slot(self, now: float) -> float:
        return self._free_slots(now)[0]

    def place(
        self,
        item: WorkItem,
        sort_key: tuple[int, float],
        seq: int,
        service_s: float,
        now: float,
        check_behind: bool,
    ) -> Placement:
        """Predict ``item``'s completion if queued now, and whom it would make late."""
        free = self._free_slots(now)
        pos = bisect.bisect(self.queue, (sort_key, seq))
        for _, _, q in self.queue[:pos]:
            heapq.heapreplace(free, free[0] + q.predicted_service_s)
        start = free[0]
        if not check_behind:
            return Placement(start, start + service_s, 0, 0.0)
        base = free.copy()
        heapq.heapreplace(free, start + service_s)
        broken, worst = 0, 0.0
        rank = item.priority.rank
        for _, _, q in self.queue[pos:]:
            before = base[0] + q.predicted_service_s
            after = free[0] + q.predicted_service_s
            heapq.heapreplace(base, before)
            heapq.heapreplace(free, after)
            # Lower classes may be displaced (they are shed later if they can no longer make
            # it); equal and higher ones were promised their deadline when admitted.
            if q.priority.rank <= rank and before <= q.deadline < after:
                broken += 1
                worst = max(worst, after - q.deadline)
        return Placement(start, start + service_s, broken, worst)
