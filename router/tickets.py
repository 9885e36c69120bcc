"""What the router hands its front ends for one request: the ticket of an admitted (or
cache-answered) request, what is reported with its answer, the refusals, and its log line."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from fleetvl.errors import DeadlineExceeded, Unavailable
from fleetvl.policy import ResolvedPolicy
from fleetvl.protocol.request import ChatRequest
from fleetvl.scheduling import AdmissionDecision, WorkItem
from router.backends import Final

__all__ = ["Expired", "Outcome", "Rejected", "Ticket", "log_line"]

log = logging.getLogger("fleetvl.router")


class Rejected(Unavailable):
    """Refused at admission: no eligible backend can meet the deadline (HTTP 503)."""

    def __init__(self, decision: AdmissionDecision | None, reason: str, message: str) -> None:
        extra: dict[str, object] = {}
        if decision is not None:
            extra["allowed_ms"] = round(decision.allowed_s * 1000, 1)
            if decision.predicted_s is not None:
                extra["predicted_ms"] = round(decision.predicted_s * 1000, 1)
        super().__init__(reason, message, decision.retry_after_s if decision else None, **extra)
        self.decision = decision


class Expired(DeadlineExceeded):
    """Admitted, then its deadline passed (queued or running): HTTP 504 / DEADLINE_EXCEEDED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)


@dataclass
class Outcome:
    """What the front end reports with the answer."""

    backend: str | None = None
    kind: str | None = None
    queue_s: float = 0.0
    ttft_s: float | None = None
    total_s: float = 0.0
    escalation_reason: str | None = None


@dataclass
class Ticket:
    req: ChatRequest
    policy: ResolvedPolicy
    item: WorkItem | None  # None: answered from the answer cache, never admitted
    decision: AdmissionDecision | None
    started: float
    slot: asyncio.Future[str] | None
    outcome: Outcome = field(default_factory=Outcome)
    cached: Final | None = None


def log_line(**fields: object) -> None:
    """One structured line per request."""
    log.info(json.dumps(fields, separators=(",", ":"), default=str))
