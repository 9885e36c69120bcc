"""Admin API (FastAPI, bearer admin token), bundle downloads, metrics and the status page.

Every write names who made it (``X-FleetVL-Actor``, default ``admin``) and may say why
(``why`` in the body); both go to the audit log. Errors are JSON with a reason:
422 invalid input, 404 unknown object, 409 conflicting state, 401 missing/wrong token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import redis
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError

from controller import metrics as m
from controller.desired import UnknownObject
from controller.rollout import RolloutError
from controller.service import Controller
from controller.spec import RolloutPlan, SiteSpec
from controller.status_page import render_status
from controller.store import JsonObject
from fleetvl.policy import PolicyError, error_details

__all__ = ["create_app"]

log = logging.getLogger("fleetvl.controller")


class PolicyBody(BaseModel):
    policy: dict[str, object] | None = Field(description="The level's policy; null removes it.")
    why: str = Field("", max_length=500, description="Reason, kept in the audit log.")


class AssignBody(BaseModel):
    bundle: str | None = Field(description="Bundle name or digest; null: back to the spec's.")
    why: str = Field("", max_length=500)


class RolloutBody(RolloutPlan):
    why: str = Field("", max_length=500, description="Reason, kept in the audit log.")


class ActionBody(BaseModel):
    why: str = Field("", max_length=500)


class CommandBody(BaseModel):
    name: str = Field(pattern=r"^(reload|recalibrate)$", description="reload | recalibrate")
    args: dict[str, str] = Field(default_factory=dict)


def _err(status: int, reason: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": reason, **extra}, status_code=status)


class _ApiError(Exception):
    """Ends a route with ``_err(status, reason)`` (the route's return type stays its body's)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def create_app(ctl: Controller) -> FastAPI:
    app = FastAPI(title="FleetVL controller", docs_url=None, redoc_url=None)

    app.state.ctl = ctl

    def _ok_token(auth: str | None) -> bool:
        return _token_ok(ctl, auth)

    @app.middleware("http")
    async def _log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        resp = await call_next(request)
        dt = time.perf_counter() - t0
        m.API_REQUESTS.labels(request.method, str(resp.status_code)).inc()
        m.API_LATENCY.observe(dt)
        log.info(
            json.dumps(
                {
                    "ts": round(time.time(), 3),
                    "event": "http",
                    "method": request.method,
                    "path": request.url.path,
                    "status": resp.status_code,
                    "ms": round(dt * 1000, 2),
                }
            )
        )
        return resp

    @app.exception_handler(_ApiError)
    async def _api_error(_r: Request, e: _ApiError) -> JSONResponse:
        return _err(e.status, e.reason)

    @app.exception_handler(_Unauthorized)
    async def _unauth(_r: Request, _e: _Unauthorized) -> JSONResponse:
        return _err(401, "missing or wrong admin token (Authorization: Bearer <token>)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in x["loc"]), "reason": x["msg"]} for x in e.errors()
        ]
        return _err(422, "invalid request", details=details)

    @app.exception_handler(ValidationError)
    async def _invalid_model(_r: Request, e: ValidationError) -> JSONResponse:
        return _err(422, "invalid value", details=error_details(e))

    @app.exception_handler(PolicyError)
    async def _policy(_r: Request, e: PolicyError) -> JSONResponse:
        return _err(422, str(e), details=error_details(e))

    @app.exception_handler(UnknownObject)
    async def _unknown(_r: Request, e: UnknownObject) -> JSONResponse:
        return _err(404, str(e))

    @app.exception_handler(redis.RedisError)
    async def _store_down(_r: Request, e: redis.RedisError) -> JSONResponse:
        log.warning("hard-state store error: %s", e)
        return _err(503, f"the controller's Redis is unavailable ({e}); retry when it is back")

    @app.exception_handler(RolloutError)
    async def _conflict(_r: Request, e: RolloutError) -> JSONResponse:
        return _err(409, str(e))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "controller_id": ctl.id}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def status_page(authorization: Annotated[str | None, Header()] = None) -> Response:
        if not ctl.config.status_page_public and not _ok_token(authorization):
            return _err(401, "the status page needs the admin token (or status_page_public)")
        try:
            audit = await ctl.store.audit_log(10)
        except redis.RedisError:  # the page still shows the fleet while Redis is away
            audit = []
        return HTMLResponse(render_status(ctl.status(), audit=audit))

    @app.get("/api/status")
    async def status(_who: Admin) -> JsonObject:
        return ctl.status()

    @app.get("/v1/alerts")
    async def alerts(_who: Admin, site: str | None = None) -> JsonObject:
        """Site health alerts holding now (of one site with ``?site=``), by site and source:
        ``{"alerts": [{"site", "source", "kind", "frames", "out_of_scope", "part",
        "message", "since"}]}``. Soft state: rebuilt from heartbeats after a restart."""
        return {"alerts": [a.public() for a in ctl.alerts.alerts(site)]}

    @app.get("/api/sites")
    async def sites(_who: Admin) -> list[JsonObject]:
        return [s.model_dump(mode="json") for s in ctl.desired.sites().values()]

    @app.put("/api/sites/{site_id}")
    async def put_site(site_id: str, body: SiteSpec, who: Admin) -> JsonObject:
        if body.id != site_id:
            raise _ApiError(422, f"body id {body.id!r} differs from the path's {site_id!r}")
        await ctl.desired.put_site(body, who, "admin API")
        return body.model_dump(mode="json")

    @app.get("/api/sites/{site_id}/policy")
    async def site_policy(site_id: str, _who: Admin) -> JsonObject:
        return {
            "layers": ctl.desired.policy_layers(site_id),
            "resolved": ctl.desired.resolved(site_id),
        }

    @app.put("/api/policies/global")
    async def put_global(body: PolicyBody, who: Admin) -> JsonObject:
        v = await ctl.desired.set_policy("global", None, body.policy, who, body.why)
        return {"version": v}

    @app.put("/api/policies/{level}/{name}")
    async def put_policy(level: str, name: str, body: PolicyBody, who: Admin) -> JsonObject:
        if level not in ("tenant", "site"):
            raise _ApiError(404, f"unknown policy level {level!r} (global, tenant, site)")
        v = await ctl.desired.set_policy(level, name, body.policy, who, body.why)
        return {"version": v}

    @app.post("/api/bundles")
    async def upload_bundle(request: Request, who: Admin, name: str = "") -> JsonObject:
        upload = ctl.bundles.ingest()
        try:
            async for chunk in request.stream():
                upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        try:
            digest = await asyncio.to_thread(upload.commit, request.headers.get("x-bundle-digest"))
        except ValueError as exc:
            raise _ApiError(422, str(exc)) from None
        await ctl.desired.register_bundle(digest, {"name": name or None, "size": upload.size}, who)
        return {"digest": digest, "size": upload.size}

    @app.get("/bundles/{digest}")
    async def download(
        digest: str, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        if not _may_download(ctl, authorization) and not _ok_token(authorization):
            return _err(401, "a valid agent credential is needed to download bundles")
        try:
            path = ctl.bundles.path(digest)
        except ValueError as exc:
            return _err(422, str(exc))
        if not path.exists():
            return _err(404, f"no bundle {digest} in this controller's store")
        return FileResponse(path, media_type="application/x-tar")

    @app.put("/api/sites/{site_id}/bundle")
    async def assign(site_id: str, body: AssignBody, who: Admin) -> JsonObject:
        digest = ctl.desired.bundle_ref(body.bundle).digest if body.bundle else None
        await ctl.desired.assign({site_id: digest}, who, body.why)
        return {"site": site_id, "bundle": digest}

    @app.post("/api/sites/{site_id}/commands")
    async def command(site_id: str, body: CommandBody, who: Admin) -> JsonObject:
        ctl.desired.site(site_id)
        s = ctl.registry.sessions.get(site_id)
        if s is None or not s.connected:
            raise _ApiError(
                409, f"site {site_id!r} has no connected agent; commands are not queued"
            )
        push_id = ctl.pusher.command(s, body.name, body.args)
        await ctl.store.audit(who, "command", body.name, site=site_id, args=body.args)
        return {"push_id": push_id}

    @app.get("/api/rollouts")
    async def rollouts(_who: Admin) -> list[JsonObject]:
        return ctl.rollout_views()

    @app.post("/api/rollouts", status_code=201)
    async def start_rollout(body: RolloutBody, who: Admin) -> JsonObject:
        plan = RolloutPlan.model_validate(body.model_dump(exclude={"why"}))
        r = await ctl.rollouts.start(plan, who, body.why)
        return r.public(len(ctl.rollouts.matching(plan)))

    @app.get("/api/rollouts/{rollout_id}")
    async def rollout(rollout_id: str, _who: Admin) -> JsonObject:
        r = ctl.rollouts.rollouts.get(rollout_id)
        if r is None:
            raise _ApiError(404, f"unknown rollout {rollout_id!r}")
        return r.public(len(ctl.rollouts.matching(r.plan)))

    @app.post("/api/rollouts/{rollout_id}/{action}")
    async def rollout_action(
        rollout_id: str, action: str, body: ActionBody, who: Admin
    ) -> JsonObject:
        if action not in ("pause", "resume", "abort"):
            raise _ApiError(404, f"unknown action {action!r} (pause, resume, abort)")
        if rollout_id not in ctl.rollouts.rollouts:
            raise _ApiError(404, f"unknown rollout {rollout_id!r}")
        r = await ctl.rollouts.set_status(rollout_id, action, who, body.why)
        return r.public(len(ctl.rollouts.matching(r.plan)))

    @app.get("/api/audit")
    async def audit(_who: Admin, limit: int = 100) -> list[JsonObject]:
        return await ctl.store.audit_log(max(1, min(limit, 10_000)))

    return app


class _Unauthorized(Exception):
    pass


def _token_ok(ctl: Controller, auth: str | None) -> bool:
    given = (auth or "").removeprefix("Bearer ").strip().encode()
    return hmac.compare_digest(given, ctl.config.admin_token.get_secret_value().encode())


def _admin(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_fleetvl_actor: Annotated[str | None, Header()] = None,
) -> str:
    """The caller's audit name, once the admin token checks out."""
    if not _token_ok(request.app.state.ctl, authorization):
        raise _Unauthorized()
    return f"admin:{x_fleetvl_actor or 'admin'}"[:80]


Admin = Annotated[str, Depends(_admin)]


def _may_download(ctl: Controller, authorization: str | None) -> bool:
    hashes = {s.token_sha256 for s in ctl.desired.sites().values() if s.token_sha256}
    if not hashes:
        return True  # no per-agent credentials configured: the store is open like the fleet
    given = (authorization or "").removeprefix("Bearer ").strip()
    return hashlib.sha256(given.encode()).hexdigest() in hashes
