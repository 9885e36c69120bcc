"""Router configuration (YAML or code): listeners, limits, keys, policies, backends."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from fleetvl.engines import engine_names
from fleetvl.policy import PolicyOverride, SlaPolicy
from fleetvl.protocol.request import RequestLimits
from fleetvl.scheduling import PredictorConfig, SchedulerConfig
from fleetvl.settings import load_settings

__all__ = ["BackendConfig", "ControllerLink", "PolicyConfig", "RouterConfig", "TlsConfig"]



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    type: Literal["engine", "grpc", "agent", "simulated"]
    kind: Literal["cloud", "edge"] = "cloud"
    site: str | None = None  # required for kind=edge: the site whose agent it is
    slots: int = Field(1, ge=1, le=1024)
    models: list[str] = Field(default_factory=list)
    bundle: str | None = None  # type=engine: a model directory for the engine
    # type=engine: a registered engine (``fleetvl.engines`` entry points: edge, edge-cached,
    # cloud, or one a plugin package adds) built on ``bundle``.
    engine: str = Field("edge", pattern=r"^[\w.-]+$")
    target: str | None = None  # type=grpc: host:port
    tls_ca_file: str | None = None  # type=grpc: verify the backend's certificate
    simulated: dict[str, Any] = Field(default_factory=dict)  # type=simulated: latency profile
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)

    @model_validator(mode="after")
    def _consistent(self) -> BackendConfig:
        if self.type == "agent":
            self.kind = "edge"
        if self.kind == "edge" and not self.site:
            raise ValueError("an edge backend must name its site")
        if self.type == "engine" and not self.bundle:
            raise ValueError("an engine backend needs `bundle`")
        if self.type == "engine" and self.engine not in engine_names():
            raise ValueError(f"no engine named {self.engine!r} is installed ({engine_names()})")
        if self.type == "grpc" and not self.target:
            raise ValueError("a grpc backend needs `target` (host:port)")
        return self


class TlsConfig(_Strict):
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: clients must present a certificate (mTLS)


class ControllerLink(_Strict):
    """Take SLA policies and agent sites from the fleet controller (its one owner)."""

    target: str = Field(description="The controller's gRPC address, host:port.")
    token: SecretStr = Field(description="The controller's router token (or its admin token).")
    tls_ca_file: str | None = Field(None, description="Set: TLS, verifying with this CA (PEM).")
    tls_cert_file: str | None = Field(
        None, description="Client certificate (PEM) when the controller's port asks for one."
    )
    tls_key_file: str | None = Field(None, description="Its private key (PEM).")
    tls_server_name: str | None = Field(
        None, description="Name the controller's certificate carries, when not the target's host."
    )
    agent_slots: int = Field(2, ge=1, le=1024, description="Concurrent calls per site agent.")
    agent_models: list[str] = Field(
        default_factory=list, description="Models the sites' agents serve; empty: what they say."
    )
    retry_s: float = Field(1.0, gt=0, description="First reconnect delay; doubles to 30 s.")


class PolicyConfig(_Strict):
    global_: SlaPolicy = Field(default_factory=SlaPolicy, alias="global")
    tenants: dict[str, PolicyOverride] = Field(default_factory=dict)
    sites: dict[str, PolicyOverride] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RouterConfig(_Strict):
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = Field(50051, ge=0, le=65535)  # None: no gRPC listener
    # API key -> tenant. Empty: no authentication (tenant from the x-fleetvl-tenant header).
    # Keys come from config or a secret file, never generated.
    api_keys: dict[str, str] = Field(default_factory=dict)
    api_keys_file: str | None = None  # YAML mapping key -> tenant (a mounted Secret)
    default_tenant: str = "default"
    limits: RequestLimits = Field(default_factory=RequestLimits)
    tls: TlsConfig | None = None
    # With `controller`, the controller's policies and sites replace `policies` (kept until
    # the first state arrives, and used alone by a router run without a controller).
    policies: PolicyConfig = Field(default_factory=PolicyConfig)
    controller: ControllerLink | None = None
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    backends: list[BackendConfig] = Field(min_length=1)
    redis_url: str | None = None  # shared cache (image blobs); None: in-memory image store
    expiry_interval_s: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _unique(self) -> RouterConfig:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError("backend names must be unique")
        return self

    def keys(self) -> dict[str, str]:
        keys = dict(self.api_keys)
        if self.api_keys_file:
            loaded = yaml.safe_load(Path(self.api_keys_file).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{self.api_keys_file} must map API keys to tenants")
            keys.update({str(k): str(v) for k, v in loaded.items()})
        return keys

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> RouterConfig:
        """The YAML file by the one settings convention (:mod:`fleetvl.settings`): ``${VAR}``
        expanded, ``FLEETVL_ROUTER_*`` on top, ``FLEETVL_REDIS_URL`` as ``redis_url``."""
        return load_settings(cls, "router", path, environ=environ)
