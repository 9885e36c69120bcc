"""The deadline-aware scheduler: admission, per-backend queues, dispatch, expiry, cancellation.

Pure logic on an injected clock (a callable returning seconds); no threads, no asyncio. The
service owns one instance and calls it from one thread (its event loop):

* a request arrives: :meth:`Scheduler.admit` queues it on the eligible backend predicted to
  finish it first, or rejects it at once with the numbers for a 503/DEADLINE_EXCEEDED;
* a backend slot frees: :meth:`Scheduler.next_for` hands over the best queued item;
* the backend finishes (or fails, or notices ``item.cancelled``): :meth:`Scheduler.complete`
  frees the slot and teaches that backend's predictor;
* periodically (e.g. every 100 ms) and after ``next_for``: :meth:`Scheduler.expire` returns the
  queued items that were dropped because they can no longer be answered in time, for the
  service to answer with an error;
* the client goes away: :meth:`Scheduler.cancel`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from fleetvl.scheduling._backend import BackendState, Placement, _Entry
from fleetvl.scheduling.decisions import (
    AdmissionDecision,
    BackendEstimate,
    CancelOutcome,
    RejectReason,
)
from fleetvl.scheduling.items import ItemState, ObservedTimings, WorkItem
from fleetvl.scheduling.ordering import Edf, Ordering
from fleetvl.scheduling.predictor import LatencyPredictor, PredictorConfig

__all__ = ["BackendSpec", "Scheduler", "SchedulerConfig"]

Clock = Callable[[], float]


class BackendSpec(BaseModel):
    """A backend the scheduler dispatches to: a cloud worker pool or a site's agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Name used in WorkItem.eligible.")
    slots: int = Field(ge=1, description="Items it serves concurrently.")
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)


class SchedulerConfig(BaseModel):
    """Switches that turn the same scheduler into the compared variants (FIFO, EDF, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    admission: bool = Field(
        True,
        description="Reject at once when no eligible backend is predicted to meet the "
        "deadline, or only by making admitted work of equal or higher priority late.",
    )
    admission_margin: float = Field(
        0.1, ge=0, description="Headroom asked of an admitted item, as a share of its service."
    )
    drop_expired: bool = Field(True, description="Never start an item past its deadline.")
    shed_unmeetable: bool = Field(
        True, description="Drop queued items that cannot finish in time even if started now."
    )
    work_stealing: bool = Field(
        True, description="An idle backend takes an eligible item from another backend's queue."
    )
    reject_on_priors: bool = Field(
        False,
        description="Let a backend whose predictor is still warming up reject or shed work on "
        "its priors alone. Off: a refusal on an unvalidated guess is a visible failure, while "
        "trying costs one slot for a while.",
    )
    max_queue: int | None = Field(1000, ge=1, description="Queued items per backend.")
    min_retry_after_s: float = Field(0.5, ge=0, description="Floor of suggested retry delays.")


@dataclass(frozen=True)
class _Option:
    """One eligible backend, as seen by admission."""

    estimate: BackendEstimate
    backend: BackendState
    service_s: float
    placement: Placement
    admissible: bool


class Scheduler:
    """Deadline-aware scheduling over named backends. Not thread-safe (see module docstring)."""

    def __init__(
        self,
        backends: Sequence[BackendSpec],
        clock: Clock,
        ordering: Ordering | None = None,
        config: SchedulerConfig | None = None,
    ) -> None:
        if not backends or len({b.name for b in backends}) != len(backends):
            raise ValueError("backends must be a non-empty list with unique names")
        self.clock = clock
        self.ordering = ordering or Edf()
        self.config = config or SchedulerConfig()
        self._backends = {
            b.name: BackendState(b.name, b.slots, LatencyPredictor(b.predictor)) for b in backends
        }
        self._live: dict[str, WorkItem] = {}  # queued or running, by id
        self._expired: list[WorkItem] = []  # dropped by next_for, not yet reported
        self._seq = itertools.count()

    def add_backend(self, spec: BackendSpec) -> None:
        """A backend that appeared at run time (a site the controller added)."""
        if spec.name in self._backends:
            raise ValueError(f"backend {spec.name!r} already exists")
        self._backends[spec.name] = BackendState(
            spec.name, spec.slots, LatencyPredictor(spec.predictor)
        )

    # -- admission ------------------------------------------------------------------------

    def admit(self, item: WorkItem) -> AdmissionDecision:
        """Queue ``item`` on its best eligible backend, or reject it.

        The chosen backend is the one with the earliest predicted completion among those that
        can take it. With ``config.admission`` the item is rejected unless that completion
        (plus the margin) is within its deadline and it makes no admitted item of equal or
        higher priority late; a backend still in predictor warm-up counts as meeting it unless
        ``config.reject_on_priors``. Rejected items are not kept.

        Raises:
            ValueError: an item with this id is already queued or running.
        """
        if item.id in self._live:
            raise ValueError(f"item {item.id!r} is already scheduled")
        now = self.clock()
        allowed = item.deadline - now
        backends = [self._backends[n] for n in sorted(item.eligible) if n in self._backends]
        if not backends:
            item.state = ItemState.REJECTED
            return AdmissionDecision(
                item.id, False, None, RejectReason.NO_ELIGIBLE_BACKEND, None, allowed, None
            )
        seq = next(self._seq)
        options = [self._option(b, item, seq, now) for b in backends]
        ok = [o for o in options if o.admissible]
        estimates = tuple(o.estimate for o in options)
        if not ok:
            item.state = ItemState.REJECTED
            return self._reject(item, now, options, estimates)
        best = min(ok, key=lambda o: o.estimate.completion_s)
        self._enqueue(best.backend, item, best.service_s, seq)
        return AdmissionDecision(
            item.id, True, best.backend.name, None, best.estimate.completion_s, allowed, None,
            estimates,
        )  # fmt: skip

    def _option(self, b: BackendState, item: WorkItem, seq: int, now: float) -> _Option:
        cfg = self.config
        service = b.service_s(item)
        key = self.ordering.sort_key(item, service)
        p = b.place(item, key, seq, service, now, check_behind=cfg.admission)
        full = cfg.max_queue is not None and len(b.queue) >= cfg.max_queue
        meets = p.completion + cfg.admission_margin * service <= item.deadline
        est = BackendEstimate(
            b.name, p.start - now, service, p.completion - now, meets, p.would_break, full
        )
        # A cold predictor's numbers still pick the backend, but refuse nothing on their own.
        trusted = cfg.reject_on_priors or b.predictor.warmed_up
        admissible = not full and (
            not cfg.admission or not trusted or (meets and not p.would_break)
        )
        return _Option(est, b, service, p, admissible)

    def _reject(
        self,
        item: WorkItem,
        now: float,
        options: list[_Option],
        estimates: tuple[BackendEstimate, ...],
    ) -> AdmissionDecision:
        allowed = item.deadline - now
        floor = self.config.min_retry_after_s
        margin = self.config.admission_margin
        open_ = [o for o in options if not o.estimate.queue_full]
        retry_after: float | None
        if not open_:
            # Asking again makes sense once a slot of the least busy backend has freed.
            retry = min(o.backend.next_free_slot(now) for o in options) - now
            best = min(options, key=lambda o: o.estimate.completion_s)
            reason, retry_after = RejectReason.QUEUE_FULL, max(retry, floor)
        elif breaking := [o for o in open_ if o.estimate.meets_deadline]:
            # It would fit, but only by pushing admitted work past its deadline.
            best = min(breaking, key=lambda o: o.placement.worst_overshoot)
            reason = RejectReason.OVERLOADED
            retry_after = max(best.placement.worst_overshoot, floor)
        else:
            best = min(open_, key=lambda o: o.estimate.completion_s)
            reason = RejectReason.DEADLINE_UNMEETABLE
            # The backlog ahead has to drain by the overshoot; if even an idle backend is too
            # slow no wait helps: the caller must relax the deadline or ask for fewer tokens.
            idle_ok = any(o.service_s * (1 + margin) <= allowed for o in open_)
            overshoot = best.estimate.completion_s + margin * best.service_s - allowed
            retry_after = max(overshoot, floor) if idle_ok else None
        return AdmissionDecision(
            item.id, False, None, reason, best.estimate.completion_s, allowed, retry_after,
            estimates,
        )  # fmt: skip

    def _enqueue(self, b: BackendState, item: WorkItem, service: float, seq: int) -> None:
        item.state = ItemState.QUEUED
        item.backend = b.name
        item.predicted_service_s = service
        b.push((self.ordering.sort_key(item, service), seq, item))
        self._live[item.id] = item

    # -- dispatch -------------------------------------------------------------------------

    def next_for(self, backend: str) -> WorkItem | None:
        """The item a freed slot of ``backend`` should run now, marked running; ``None`` when
        all its slots are busy or nothing worth running is queued for it.

        Queued items met on the way that can no longer be answered in time are dropped and
        reported by the next :meth:`expire`. With ``work_stealing``, an idle backend takes the
        best item of another backend's queue that it may run and can finish in time.
        """
        b = self._backends[backend]
        if len(b.running) >= b.slots:
            return None
        now = self.clock()
        item = None
        while b.queue:
            _, _, head = b.queue.pop(0)
            if self._expiry_reason(b, head, now) is None:
                item = head
                break
            self._drop(head, now)
        if item is None and self.config.work_stealing:
            item = self._steal(b, now)
        if item is None:
            return None
        item.state = ItemState.RUNNING
        item.backend = b.name
        item.started = now
        item.predicted_service_s = b.service_s(item)  # fresher than the one from admission
        b.running[item.id] = item
        return item

    def _steal(self, b: BackendState, now: float) -> WorkItem | None:
        best: tuple[_Entry, BackendState] | None = None
        for other in self._backends.values():
            if other is b:
                continue
            for entry in other.queue:
                item = entry[2]
                if b.name in item.eligible and now + b.service_s(item) <= item.deadline:
                    if best is None or entry[:2] < best[0][:2]:
                        best = (entry, other)
                    break  # the first eligible one is that queue's best
        if best is None:
            return None
        best[1].remove(best[0][2])
        return best[0][2]

    def complete(self, item: WorkItem, timings: ObservedTimings | None = None) -> bool:
        """A running item ended: free its slot; learn from ``timings`` if it ran to the end.

        Pass ``timings=None`` for failures and for items stopped after a cancel.

        Returns:
            Whether it ended by its deadline.
        Raises:
            KeyError: the item is not running.
        """
        if item.state is not ItemState.RUNNING or item.backend is None:
            raise KeyError(f"item {item.id!r} is not running (state {item.state.value})")
        b = self._backends[item.backend]
        del b.running[item.id]
        del self._live[item.id]
        item.state = ItemState.CANCELLED if item.cancelled else ItemState.DONE
        if timings is not None and not item.cancelled:
            b.predictor.observe(
                item.prompt_tokens, item.image_tokens, item.max_output_tokens, timings
            )
        return self.clock() <= item.deadline

    # -- expiry and cancellation ----------------------------------------------------------

    def _expiry_reason(self, b: BackendState, item: WorkItem, now: float) -> str | None:
        if self.config.drop_expired and now >= item.deadline:
            return "deadline_passed"
        trusted = self.config.reject_on_priors or b.predictor.warmed_up
        if self.config.shed_unmeetable and trusted and now + b.service_s(item) > item.deadline:
            return "deadline_unmeetable"
        return None

    def _drop(self, item: WorkItem, now: float) -> None:
        item.state = ItemState.EXPIRED
        item.expiry_reason = self._expiry_reason(self._backends[item.backend or ""], item, now)
        del self._live[item.id]
        self._expired.append(item)

    def expire(self) -> list[WorkItem]:
        """Drop queued items that can no longer be answered in time and return every item
        dropped since the last call (``item.expiry_reason`` says why). Running items are the
        backend's to stop: compare ``clock()`` with ``item.deadline``.
        """
        now = self.clock()
        for b in self._backends.values():
            keep = []
            for entry in b.queue:
                if self._expiry_reason(b, entry[2], now) is None:
                    keep.append(entry)
                else:
                    self._drop(entry[2], now)
            b.queue = keep
        out, self._expired = self._expired, []
        return out

    def cancel(self, item_id: str) -> CancelOutcome:
        """The client gave up on ``item_id``: a queued item is removed, a running one flagged
        (``item.cancelled``) for its backend to stop and then :meth:`complete`."""
        item = self._live.get(item_id)
        if item is None:
            return CancelOutcome.NOT_FOUND
        item.cancelled = True
        if item.state is ItemState.RUNNING:
            return CancelOutcome.FLAGGED
        self._backends[item.backend or ""].remove(item)
        item.state = ItemState.CANCELLED
        del self._live[item_id]
        return CancelOutcome.REMOVED

    # -- introspection --------------------------------------------------------------------

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self._backends)

    def predictor(self, backend: str) -> LatencyPredictor:
        return self._backends[backend].predictor

    def queued(self, backend: str) -> list[WorkItem]:
        """The backend's queue, best first."""
        return [e[2] for e in self._backends[backend].queue]

    def running(self, backend: str) -> list[WorkItem]:
        return list(self._backends[backend].running.values())

    def free_slots(self, backend: str) -> int:
        b = self._backends[backend]
        return b.slots - len(b.running)

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per backend: queue length, running items, predictor state (for metrics/status)."""
        return {
            n: {"queued": len(b.queue), "running": len(b.running), **b.predictor.snapshot()}
            for n, b in self._backends.items()
        }
