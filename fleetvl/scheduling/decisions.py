"""What the scheduler answers: admission decisions, rejection reasons, cancellation outcomes.

Mapping to the wire happens only at the API edge; the suggested one:

=======================  ======================  ======================
reason                   HTTP                    gRPC
=======================  ======================  ======================
no_eligible_backend      503                     UNAVAILABLE
deadline_unmeetable      503 (+ Retry-After)     DEADLINE_EXCEEDED
overloaded, queue_full   503 + Retry-After       RESOURCE_EXHAUSTED
=======================  ======================  ======================

``retry_after_s`` is ``None`` for a deadline that even an idle backend cannot meet: asking
again unchanged cannot succeed, so send no Retry-After and say so in the body.
``Retry-After`` is whole seconds: send ``ceil(retry_after_s)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from fleetvl.errors import FleetVLError

__all__ = [
    "AdmissionDecision",
    "AdmissionRejected",
    "BackendEstimate",
    "CancelOutcome",
    "RejectReason",
]


class RejectReason(StrEnum):
    NO_ELIGIBLE_BACKEND = "no_eligible_backend"  # none of the item's backends is known here
    DEADLINE_UNMEETABLE = "deadline_unmeetable"  # predicted completion is past the deadline
    OVERLOADED = "overloaded"  # it would fit, but only by making admitted work late
    QUEUE_FULL = "queue_full"  # every eligible queue is at its length limit


class CancelOutcome(StrEnum):
    REMOVED = "removed"  # was queued; it is gone and will never run
    FLAGGED = "flagged"  # is running; item.cancelled is set for the backend to notice
    NOT_FOUND = "not_found"  # unknown, finished, expired or already cancelled


@dataclass(frozen=True)
class BackendEstimate:
    """One eligible backend's prediction for the item; times in seconds from the decision."""

    backend: str
    wait_s: float
    service_s: float
    completion_s: float
    meets_deadline: bool  # with the admission margin
    would_break: int  # admitted items of equal or higher priority it would make late
    queue_full: bool


@dataclass(frozen=True)
class AdmissionDecision:
    """The outcome of :meth:`Scheduler.admit`; times in seconds from the decision.

    On rejection ``predicted_s`` is the best eligible backend's predicted completion and
    ``allowed_s`` the time left to the deadline; ``retry_after_s`` is when asking again is
    predicted to succeed, ``None`` when it cannot (even an idle backend is too slow).
    """

    item_id: str
    accepted: bool
    backend: str | None
    reason: RejectReason | None
    predicted_s: float | None
    allowed_s: float
    retry_after_s: float | None
    estimates: tuple[BackendEstimate, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def raise_if_rejected(self) -> None:
        """For callers that prefer an exception to a branch."""
        if not self.accepted:
            raise AdmissionRejected(self)


class AdmissionRejected(FleetVLError):
    """A request refused at admission; ``decision`` carries the numbers for the response."""

    def __init__(self, decision: AdmissionDecision) -> None:
        self.decision = decision
        self.reason = decision.reason
        predicted = "n/a" if decision.predicted_s is None else f"{decision.predicted_s:.3f} s"
        retry = decision.retry_after_s
        hint = "" if retry is None else f"; retry in {retry:.1f} s"
        super().__init__(
            f"{decision.reason}: predicted completion {predicted}, "
            f"deadline in {decision.allowed_s:.3f} s{hint}"
        )
