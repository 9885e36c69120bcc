"""The demo's report: per site and overall, requests, who served them, escalation rate,
p50/p95 latency, SLA attainment, accuracy (graded answers: overall and by who served them) and
refusals with their reasons."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import NotRequired, TypedDict

import numpy as np

from fleetvl_tools.launch.workload import Outcome

__all__ = ["DemoSummary", "Summary", "accuracy_line", "format_report", "print_report",
           "summarize"]  # fmt: skip


class Accuracy(TypedDict):
    graded: int
    correct: int
    accuracy: float | None


class Summary(Accuracy):
    """One site's requests, or all of them."""

    requests: int
    answered: int
    served_by: dict[str, int]  # edge | cloud | cache -> answers
    escalated: int
    escalation_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    sla_met: int
    sla_attainment: float | None
    refused: dict[str, int]  # "status reason" -> requests
    accuracy_by: dict[str, Accuracy]


class DemoSummary(TypedDict):
    sites: dict[str, Summary]
    overall: Summary
    wall_s: NotRequired[float]  # set by run_demo


def _accuracy(outs: Sequence[Outcome]) -> Accuracy:
    graded = [o.correct for o in outs if o.correct is not None]
    right = sum(graded)
    return {"graded": len(graded), "correct": right,
            "accuracy": right / len(graded) if graded else None}  # fmt: skip


def _summary(outs: Sequence[Outcome]) -> Summary:
    answered = [o for o in outs if o.answered]
    lat = np.array([o.latency_s * 1000 for o in answered]) if answered else np.array([])
    from_agent = [o for o in answered if o.req.via == "agent"]
    served = Counter(o.served_by or "?" for o in answered)
    refused = Counter(f"{o.status} {o.reason}" for o in outs if not o.answered)
    return {
        "requests": len(outs),
        "answered": len(answered),
        "served_by": {k: served.get(k, 0) for k in ("edge", "cloud", "cache")},
        "escalated": sum(o.escalated for o in from_agent),
        "escalation_rate": (sum(o.escalated for o in from_agent) / len(from_agent))
        if from_agent else None,
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
        "sla_met": sum(o.met_sla for o in outs),
        "sla_attainment": sum(o.met_sla for o in outs) / len(outs) if outs else None,
        "refused": dict(refused),
        **_accuracy(answered),
        "accuracy_by": {k: _accuracy([o for o in answered if o.served_by == k])
                        for k in ("edge", "cloud", "cache")},
    }  # fmt: skip


def summarize(outs: Sequence[Outcome], sites: Sequence[str]) -> DemoSummary:
    return {
        "sites": {s: _summary([o for o in outs if o.req.site == s]) for s in sites},
        "overall": _summary(outs),
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def format_report(summary: DemoSummary, residency: dict[str, str]) -> list[str]:
    head = (f"{'site':<16} {'residency':<12} {'req':>4} {'ok':>4} {'edge':>5} {'cloud':>5} "
            f"{'cache':>5} {'escal.':>7} {'p50 ms':>7} {'p95 ms':>7} {'SLA':>5} "
            f"{'acc.':>5}")  # fmt: skip
    lines = [head, "-" * len(head)]
    rows = [*summary["sites"].items(), ("overall", summary["overall"])]
    for name, s in rows:
        if name == "overall":
            lines.append("-" * len(head))
        sb = s["served_by"]
        lines.append(
            f"{name:<16} {residency.get(name, ''):<12} {s['requests']:>4} {s['answered']:>4} "
            f"{sb['edge']:>5} {sb['cloud']:>5} {sb['cache']:>5} {_pct(s['escalation_rate']):>7} "
            f"{_ms(s['latency_p50_ms']):>7} {_ms(s['latency_p95_ms']):>7} "
            f"{_pct(s['sla_attainment']):>5} {_pct(s['accuracy']):>5}"
        )
    lines.append(accuracy_line(summary["overall"]))
    refusals = [
        (name, r, n) for name, s in summary["sites"].items() for r, n in s["refused"].items()
    ]
    lines.append("refusals: " + ("none" if not refusals else ""))
    lines += [f"  {name}: {n} x {r}" for name, r, n in refusals]
    return lines


def accuracy_line(s: Summary) -> str:
    """Exact-answer accuracy overall and by who served the answer."""
    if not s["graded"]:
        return "accuracy: n/a (no graded answers: the random-weight fallback model)"
    parts = [f"{k} {_pct(a['accuracy'])} ({a['correct']}/{a['graded']})"
             for k, a in s["accuracy_by"].items() if a["graded"]]  # fmt: skip
    return (
        f"accuracy (exact answer): overall {_pct(s['accuracy'])} "
        f"({s['correct']}/{s['graded']}); " + ", ".join(parts)
    )


def print_report(summary: DemoSummary, residency: dict[str, str],
                 say: Callable[[str], None]) -> None:  # fmt: skip
    for line in format_report(summary, residency):
        say(line)
