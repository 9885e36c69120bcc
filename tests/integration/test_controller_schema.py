"""Property-based requests from the admin API's own OpenAPI schema (schemathesis) against a
running controller with the admin token: no input may produce a 5xx."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from controller.api import create_app
from controller.config import ControllerConfig
from controller.service import Controller
from controller.store import ControllerStore
from tests.controller_harness import ADMIN, RunningController, new_namespace

SPEC = {
    "tenants": {"grid": {}},
    "bundles": {"v1": {"digest": "sha256:" + "1" * 64}},
    "sites": [{"id": "sub-001", "tenant": "grid"}, {"id": "sub-002", "tenant": "grid"}],
}
# The schema comes from the app itself; building it touches neither Redis nor the network.
_cfg = ControllerConfig(admin_token=ADMIN, spec=SPEC, bundle_dir=tempfile.mkdtemp())
schema = schemathesis.openapi.from_dict(create_app(Controller(_cfg, "http://x")).openapi())


@pytest.fixture(scope="module")
def controller() -> Iterator[RunningController]:
    ns = new_namespace()
    rc = RunningController({"namespace": ns, "spec": SPEC, "bundle_dir": tempfile.mkdtemp()})
    yield rc
    rc.close()

    async def drop() -> None:
        store = ControllerStore("redis://127.0.0.1:6379/0", ns)
        await store.drop_all()
        await store.close()

    asyncio.run(drop())


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_no_input_makes_the_controller_fail(
    case: schemathesis.Case, controller: RunningController
) -> None:
    case.call_and_validate(
        base_url=controller.url,
        headers={"Authorization": f"Bearer {ADMIN}"},
        checks=[not_a_server_error],
    )
