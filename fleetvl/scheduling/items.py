"""Work items: what the scheduler queues, and what a backend reports when it finishes one."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from fleetvl.policy import Priority, SlaPolicy

__all__ = ["ItemState", "ObservedTimings", "WorkItem", "item_from_policy"]


class ItemState(StrEnum):
    NEW = "new"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    REJECTED = "rejected"
    EXPIRED = "expired"  # dropped from a queue: deadline passed or could no longer be met
    CANCELLED = "cancelled"  # removed from a queue by the caller


@dataclass(eq=False)
class WorkItem:
    """One request to schedule. Times are seconds on the scheduler's clock.

    ``eligible`` names the backends it may run on; residency decides that upstream (an
    ``edge_only`` request lists only its site's agent). The fields after ``cancelled`` are the
    scheduler's bookkeeping: read them, do not set them.
    """

    id: str
    eligible: frozenset[str]
    priority: Priority
    arrival: float
    deadline: float  # absolute
    prompt_tokens: int
    image_tokens: int = 0
    max_output_tokens: int = 256
    # Set by Scheduler.cancel(); a backend running the item polls it (e.g. between decode
    # steps) and stops, then reports with Scheduler.complete().
    cancelled: bool = False
    state: ItemState = field(default=ItemState.NEW, init=False)
    backend: str | None = field(default=None, init=False)
    started: float | None = field(default=None, init=False)
    predicted_service_s: float = field(default=0.0, init=False)  # on ``backend``, at admission
    expiry_reason: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # Callers build items from validated requests; a bad one here is a bug, not user input.
        if min(self.prompt_tokens, self.image_tokens) < 0 or self.max_output_tokens < 1:
            raise ValueError(
                f"item {self.id!r}: token counts must be >= 0 and max_output_tokens >= 1, got "
                f"{self.prompt_tokens}/{self.image_tokens}/{self.max_output_tokens}"
            )
        self.eligible = frozenset(self.eligible)
        self.priority = Priority(self.priority)


@dataclass(frozen=True)
class ObservedTimings:
    """What a backend measured while serving one item, from the moment it started it.

    ``ttft_s`` is service time to the first token (queue wait excluded: the scheduler predicts
    that separately); ``total_s`` to the last token.
    """

    ttft_s: float
    total_s: float
    output_tokens: int

    def __post_init__(self) -> None:
        if self.ttft_s < 0 or self.total_s < self.ttft_s or self.output_tokens < 0:
            raise ValueError(f"inconsistent timings: {self}")


def item_from_policy(
    item_id: str,
    policy: SlaPolicy,
    *,
    now: float,
    eligible: frozenset[str] | set[str],
    prompt_tokens: int,
    image_tokens: int = 0,
) -> WorkItem:
    """A work item arriving ``now`` under a resolved policy (deadline, priority, max tokens)."""
    return WorkItem(
        id=item_id,
        eligible=frozenset(eligible),
        priority=policy.priority,
        arrival=now,
        deadline=now + policy.deadline_ms / 1000.0,
        prompt_tokens=prompt_tokens,
        image_tokens=image_tokens,
        max_output_tokens=policy.max_output_tokens,
    )
