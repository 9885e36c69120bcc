"""Prometheus metrics of the controller itself."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 120)

AGENTS_CONNECTED = Gauge("fleetvl_controller_agents_connected", "Agent sessions open now")
SESSIONS = Counter(
    "fleetvl_controller_sessions_total", "Agent session attempts by outcome", ["outcome"]
)
HEARTBEATS = Counter("fleetvl_controller_heartbeats_total", "Heartbeats received")
PUSHES = Counter("fleetvl_controller_pushes_total", "Pushes sent to agents", ["kind"])
PUSH_FAILURES = Counter(
    "fleetvl_controller_push_failures_total", "Pushes an agent refused (nack)", ["kind"]
)
PUSH_ACK = Histogram(
    "fleetvl_controller_push_ack_seconds",
    "Push sent to agent acknowledged",
    ["kind"],
    buckets=_LAT,
)
ROLLOUT_TRANSITIONS = Counter(
    "fleetvl_controller_rollout_transitions_total", "Rollout state changes", ["to"]
)
API_REQUESTS = Counter(
    "fleetvl_controller_api_requests_total", "Admin API requests", ["method", "status"]
)
API_LATENCY = Histogram("fleetvl_controller_api_seconds", "Admin API request latency", buckets=_LAT)
SITE_ALERTS = Gauge(
    "fleetvl_controller_site_alerts", "Site health alerts holding now (controller.alerts)", ["kind"]
)
ROUTERS_WATCHING = Gauge("fleetvl_controller_routers_watching", "Routers watching routing now")
ROUTING_PUSHES = Counter("fleetvl_controller_routing_pushes_total", "Routing states sent")
