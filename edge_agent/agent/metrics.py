"""Prometheus metrics of the site agent (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "fleetvl_edge_requests_total",
    "Requests by outcome (edge, cloud, queued, low_confidence_local, error, invalid)",
    ["outcome"],
)
GATE = Counter(
    "fleetvl_edge_gate_decisions_total", "Gate verdicts on local answers", ["signal", "passed"]
)
EARLY_STOPS = Counter(
    "fleetvl_edge_early_escalations_total",
    "Local attempts stopped before their end to escalate",
    ["reason"],
)
LOCAL_TOKENS = Counter("fleetvl_edge_local_tokens_total", "Tokens the edge engines generated")
ESCALATIONS = Counter(
    "fleetvl_edge_escalations_total", "Escalations to the cloud by result", ["result"]
)
ESCALATION_SECONDS = Histogram(
    "fleetvl_edge_escalation_seconds", "Escalation call to the cloud's final answer", buckets=_LAT
)
LATENCY = Histogram("fleetvl_edge_request_seconds", "Request arrival to answer", buckets=_LAT)
UPLINK_UP = Gauge("fleetvl_edge_uplink_up", "1 while the agent's connection to the router is up")
SPOOL_PENDING = Gauge("fleetvl_edge_spool_pending", "Escalations waiting in the spool")
SPOOL_BYTES = Gauge("fleetvl_edge_spool_pending_bytes", "Payload bytes waiting in the spool")
SPOOL_DELIVERIES = Counter(
    "fleetvl_edge_spool_deliveries_total",
    "Spooled escalation delivery attempts by result (done, retry, failed, expired)",
    ["result"],
)
SPOOL_REFUSED = Counter("fleetvl_edge_spool_refused_total", "Waits refused: spool over quota")
LOCAL_QUEUE = Gauge("fleetvl_edge_local_queue", "Requests waiting for a local engine")
SCOPE_VERDICTS = Counter(
    "fleetvl_edge_scope_verdicts_total",
    "Requests the out-of-scope score judged, by site, image source and verdict "
    "(in_scope, or the part that found it out of scope: vision, camera, frozen)",
    ["site", "source", "verdict"],
)
UNANSWERABLE = Counter(
    "fleetvl_edge_unanswerable_total",
    "Answers with the verdict unanswerable (out of scope, refused), by site and image source",
    ["site", "source"],
)

_MAX_SOURCES = 64
_sources: set[str] = set()


def source_label(source: str | None) -> str:
    """A bounded label for an image source: the first 64 sources by name, then "other" (a
    client that invents a source per request must not grow the metric without bound)."""
    name = source or "unnamed"
    if name in _sources:
        return name
    if len(_sources) < _MAX_SOURCES:
        _sources.add(name)
        return name
    return "other"
CACHE_PROBES = Counter(
    "fleetvl_edge_cache_probes_total",
    "Answer-cache probes before local inference, by outcome (hit | miss | failed)",
    ["outcome"],
)
