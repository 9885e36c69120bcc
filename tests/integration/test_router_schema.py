"""Property-based requests from the router's own OpenAPI schema (schemathesis): no input may
produce a 5xx. Runs in process over ASGI with simulated backends (no auth, to reach the
handlers)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from router.config import RouterConfig
from router.http_app import create_app
from router.main import build_backends
from router.service import RouterService

_config = RouterConfig.model_validate(
    {
        "grpc_port": None,
        "policies": {"sites": {"s1": {"residency": "edge_only"}}},
        "backends": [
            {"name": "cloud", "type": "simulated", "models": ["fleet-sim"], "slots": 4},
            {
                "name": "edge-s1",
                "type": "simulated",
                "kind": "edge",
                "site": "s1",
                "models": ["fleet-sim"],
            },
        ],
    }  # fmt: skip
)
app = create_app(RouterService(_config, build_backends(_config)))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_input_makes_the_router_fail(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
