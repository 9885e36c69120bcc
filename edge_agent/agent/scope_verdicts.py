"""The agent's side of the out-of-scope verdict: counting it, and the ``unanswerable`` answer.

Every request the bundle's scope model judged is counted per image source (Prometheus, and
the :class:`~edge_agent.agent.source_health.SourceHealth` the controller's alerts read). An
input judged out of scope and not escalated gets the verdict ``unanswerable``: no text, the
scope verdict as its reason, served by the edge. A named source whose feed froze (the same
image for ``gate.frozen_after_s``) is judged out of scope too, with the part ``frozen``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from edge_agent.agent import metrics
from edge_agent.agent.answers import Answer
from fleetvl.protocol.request import ChatRequest
from fleetvl.vlm.scope import ScopeScore

if TYPE_CHECKING:
    from edge_agent.agent.local import LocalAttempt
    from edge_agent.agent.source_health import SourceHealth
    from fleetvl.policy import ResolvedPolicy

__all__ = ["count_verdict", "frozen_verdict", "unanswerable"]


def frozen_verdict(a: LocalAttempt, unchanged_s: float, after_s: float) -> LocalAttempt:
    """``a`` with the frozen-feed part added to its scope verdict: the source has sent the same
    image for ``unchanged_s`` seconds, out of scope from ``after_s`` (0: the check is off)."""
    if after_s <= 0 or unchanged_s <= 0:
        return a
    ratio = unchanged_s / after_s
    scope = a.scope or ScopeScore(0.0, 1.0, "", "frozen", {})
    return replace(a, scope=scope.with_part("frozen", ratio))


def count_verdict(site: str, health: SourceHealth, req: ChatRequest, a: LocalAttempt) -> None:
    """Count a scored attempt: in scope, or the part of the score that refused it."""
    if a.scope is None:
        return
    out = a.out_of_scope
    source = metrics.source_label(req.source)
    metrics.SCOPE_VERDICTS.labels(site, source, a.scope.part if out else "in_scope").inc()
    health.record(req.source, out, a.scope.part if out else None)


def unanswerable(
    req: ChatRequest,
    resolved: ResolvedPolicy,
    a: LocalAttempt,
    site: str,
    timings_ms: dict[str, float],
    note: str = "",
) -> Answer:
    """The verdict ``unanswerable`` for an input the edge model's scope score refused."""
    if a.scope is None:
        raise ValueError("an unanswerable verdict needs the scope score that gave it")
    metrics.UNANSWERABLE.labels(site, metrics.source_label(req.source)).inc()
    return Answer(
        id=req.id,
        model=req.model,
        text="",
        finish_reason="out_of_scope",
        served_by="edge",
        confidence=None,
        signal=a.verdict.signal,
        threshold=None,
        meets_min_confidence=False,
        escalation_reason=note or None,
        prompt_tokens=a.prompt_tokens,
        timings_ms=timings_ms,
        policy=resolved.explain(),
        backend=f"edge:{site}",
        verdict="unanswerable",
        out_of_scope=a.scope.as_dict(),
    )
