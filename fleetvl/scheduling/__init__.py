"""Deadline-aware scheduling: queues per backend, a learned latency predictor, admission.

Pure logic on an injected clock; the router and the edge agent wrap it in their event loops.
See :mod:`fleetvl.scheduling.scheduler` for the call protocol.
"""

from __future__ import annotations

from fleetvl.scheduling.decisions import (
    AdmissionDecision,
    AdmissionRejected,
    BackendEstimate,
    CancelOutcome,
    RejectReason,
)
from fleetvl.scheduling.items import ItemState, ObservedTimings, WorkItem, item_from_policy
from fleetvl.scheduling.ordering import Edf, Fifo, LeastSlack, Ordering
from fleetvl.scheduling.predictor import LatencyPredictor, PredictorConfig, ServiceEstimate
from fleetvl.scheduling.scheduler import BackendSpec, Scheduler, SchedulerConfig

__all__ = [
    "AdmissionDecision",
    "AdmissionRejected",
    "BackendEstimate",
    "BackendSpec",
    "CancelOutcome",
    "Edf",
    "Fifo",
    "ItemState",
    "LatencyPredictor",
    "LeastSlack",
    "ObservedTimings",
    "Ordering",
    "PredictorConfig",
    "RejectReason",
    "Scheduler",
    "SchedulerConfig",
    "ServiceEstimate",
    "WorkItem",
    "item_from_policy",
]
