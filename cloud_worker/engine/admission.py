"""Deadline admission at the slot: a request that cannot finish in time does not take one.

The waiting queue is ordered by (priority class, deadline). When a slot frees, the best
waiting request gets it only if the engine's own measurements say it can still finish by its
deadline: prefill at the recent seconds-per-prompt-token, then ``max_tokens`` decode steps at
the recent seconds-per-token under the current load (both EWMAs over finished requests). One
that cannot ends at once with ``finish_reason`` ``deadline`` — its caller learns now instead of
receiving a late answer — and the slot serves one that can. ``max_tokens`` bounds the answer
from above, so the estimate errs toward refusing.
"""

from __future__ import annotations

import time

from cloud_worker.engine.requests import EngineRequest

__all__ = ["DeadlineAdmission"]


class DeadlineAdmission:
    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.token_s = 0.0  # decode seconds per generated token, under load
        self.prefill_s_per_token = 0.0
        self.dropped = 0  # refused at the slot: could not make their deadline
        self.finished = 0
        self.finished_in_time = 0

    def predicted_s(self, req: EngineRequest) -> float:
        """Slot to last token (0 until a request has finished: the deadline alone decides)."""
        return self.prefill_s_per_token * len(req.prompt) + self.token_s * req.params.max_tokens

    def admits(self, req: EngineRequest, now: float) -> bool:
        if now + self.predicted_s(req) <= req.deadline:
            return True
        self.dropped += 1
        return False

    def learn(self, req: EngineRequest, now: float | None = None) -> None:
        """Fold a completed request's measured costs into the estimates."""
        now = time.monotonic() if now is None else now
        self.finished += 1
        self.finished_in_time += now <= req.deadline
        if not (req.first and req.started and len(req.tokens) > 1):
            return
        per_token = (now - req.first) / (len(req.tokens) - 1)
        prefill = (req.first - req.started) / max(len(req.prompt), 1)
        a = self.alpha if self.token_s else 1.0
        self.token_s += a * (per_token - self.token_s)
        self.prefill_s_per_token += a * (prefill - self.prefill_s_per_token)

    @property
    def attainment(self) -> float:
        """Completed requests that finished by their deadline, of those completed."""
        return self.finished_in_time / self.finished if self.finished else 1.0
