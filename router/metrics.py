"""Prometheus metrics of the router."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "fleetvl_router_requests_total",
    "Requests by outcome (ok, rejected, expired, deadline_exceeded, invalid, error, cancelled)",
    ["api", "outcome", "served_by"],
)
REJECTIONS = Counter("fleetvl_router_rejections_total", "Requests refused at admission", ["reason"])
BACKEND_REQUESTS = Counter(
    "fleetvl_router_backend_requests_total", "Requests dispatched per backend", ["backend", "kind"]
)
RESIDENCY_VIOLATIONS = Counter(
    "fleetvl_router_residency_violations_total",
    "edge_only requests that reached a cloud backend (stopped at dispatch; must stay 0)",
)
INFLIGHT = Gauge("fleetvl_router_inflight", "Requests admitted and not finished")
LATENCY = Histogram(
    "fleetvl_router_request_seconds", "Request start to last byte", ["api"], buckets=_LAT
)
TTFT = Histogram("fleetvl_router_ttft_seconds", "Request start to first token", buckets=_LAT)
QUEUE = Histogram("fleetvl_router_queue_seconds", "Admission to dispatch", buckets=_LAT)
UNANSWERABLE = Counter(
    "fleetvl_router_unanswerable_total",
    "Answers with the verdict unanswerable (the serving model called the input out of its "
    "scope), by backend; counted as answered (outcome ok), never as errors",
    ["backend"],
)
IDEMPOTENCY_STORE_ERRORS = Counter(
    "fleetvl_router_idempotency_store_errors_total",
    "Redis calls of the idempotency record that failed (replays then run again)",
    ["op"],
)
IDEMPOTENT_REPLAYS = Counter(
    "fleetvl_router_idempotent_replays_total",
    "Generate calls answered from the idempotency record (a spool replay already answered)",
)
ROUTING_VERSION = Gauge(
    "fleetvl_router_routing_version", "Policy version of the controller's routing state applied"
)
ROUTING_UPDATES = Counter(
    "fleetvl_router_routing_updates_total",
    "Routing states from the controller, by result (applied | invalid)",
    ["result"],
)
CONTROLLER_CONNECTED = Gauge(
    "fleetvl_router_controller_connected", "1 while the routing watch is open, else 0"
)
CONTROLLER_ERRORS = Counter(
    "fleetvl_router_controller_errors_total", "Routing watches that failed, by gRPC code", ["code"]
)
ANSWER_CACHE = Counter(
    "fleetvl_router_answer_cache_total",
    "Answer-cache lookups before admission, by result (hit | miss)",
    ["result"],
)
IMAGE_BYTES_IN = Counter(
    "fleetvl_router_image_bytes_received_total",
    "Image bytes received inline (an image the shared store already held costs none)",
    ["api"],
)
