"""Queue orderings: which queued item a free backend slot takes first.

Every ordering sorts by priority class first (critical, standard, batch; switch off with
``by_priority=False``) and then by its own key, smallest first. The key is computed once, when
the item is queued, so it must not depend on the time: least slack qualifies because
``slack = deadline - now - service`` sorts like ``deadline - service`` at every instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetvl.scheduling.items import WorkItem

__all__ = ["Edf", "Fifo", "LeastSlack", "Ordering"]


@dataclass(frozen=True)
class Ordering:
    """Base of the pluggable orderings; subclasses define :meth:`key`."""

    by_priority: bool = True

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def sort_key(self, item: WorkItem, predicted_service_s: float) -> tuple[int, float]:
        return (item.priority.rank if self.by_priority else 0, self.key(item, predicted_service_s))

    def key(self, item: WorkItem, predicted_service_s: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Fifo(Ordering):
    """Arrival order: the baseline."""

    def key(self, item: WorkItem, predicted_service_s: float) -> float:
        return item.arrival


@dataclass(frozen=True)
class Edf(Ordering):
    """Earliest deadline first."""

    def key(self, item: WorkItem, predicted_service_s: float) -> float:
        return item.deadline


@dataclass(frozen=True)
class LeastSlack(Ordering):
    """Least slack first: a long job due at 10 s goes before a short one due at 9.9 s."""

    def key(self, item: WorkItem, predicted_service_s: float) -> float:
        return item.deadline - predicted_service_s
