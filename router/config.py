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
    name: str = Field(min_length=1, pattern=r"^[\w.-]+$", description="Unique backend name.")
    type: Literal["engine", "grpc", "agent", "simulated"] = Field(
        description="engine: a model in this process; grpc: a fleetvl.v1 server (the cloud "
        "worker); agent: a site's agent over its outbound connection; simulated: a test model."
    )
    kind: Literal["cloud", "edge"] = Field(
        "cloud", description="What residency checks: edge backends belong to one site."
    )
    site: str | None = Field(None, description="kind=edge: the site whose agent it is.")
    slots: int = Field(1, ge=1, le=1024, description="Requests it serves at once.")
    models: list[str] = Field(
        default_factory=list, description="Model names it answers for; empty: any."
    )
    bundle: str | None = Field(None, description="type=engine: the model directory.")
    engine: str = Field(
        "edge", pattern=r"^[\w.-]+$",
        description="type=engine: a registered engine (fleetvl.engines entry points: edge, "
        "edge-cached, cloud, or one a plugin package adds) built on `bundle`.",
    )  # fmt: skip
    target: str | None = Field(None, description="type=grpc: host:port.")
    tls_ca_file: str | None = Field(
        None, description="type=grpc: verify the backend's certificate with this CA (PEM)."
    )
    simulated: dict[str, Any] = Field(
        default_factory=dict, description="type=simulated: its latency profile."
    )
    predictor: PredictorConfig = Field(
        default_factory=PredictorConfig, description="Latency predictor seed (learned online)."
    )

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
    cert_file: str = Field(description="Server certificate (PEM), HTTP and gRPC.")
    key_file: str = Field(description="Its private key (PEM).")
    client_ca_file: str | None = Field(
        None, description="Set: clients must present a certificate signed by this CA (mTLS)."
    )


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
    global_: SlaPolicy = Field(
        default_factory=SlaPolicy, alias="global", description="The fleet-wide policy."
    )
    tenants: dict[str, PolicyOverride] = Field(
        default_factory=dict, description="Tenant -> its override (tightens residency only)."
    )
    sites: dict[str, PolicyOverride] = Field(
        default_factory=dict, description="Site -> its override (tightens residency only)."
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RouterConfig(_Strict):
    http_host: str = Field("127.0.0.1", description="OpenAI-compatible HTTP listen address.")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port (/v1, /metrics).")
    grpc_host: str = Field("127.0.0.1", description="fleetvl.v1 gRPC listen address.")
    grpc_port: int | None = Field(
        50051, ge=0, le=65535, description="gRPC port (escalations, agents); None: none."
    )
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key -> tenant. Empty: no authentication (tenant from the "
        "x-fleetvl-tenant header). Keys come from config or a secret file, never generated.",
    )
    api_keys_file: str | None = Field(
        None, description="YAML mapping API key -> tenant (a mounted Secret)."
    )
    default_tenant: str = Field("default", description="Tenant when no key maps one.")
    limits: RequestLimits = Field(
        default_factory=RequestLimits, description="What one request may ask for."
    )
    tls: TlsConfig | None = Field(None, description="TLS (and mTLS) on both listeners.")
    policies: PolicyConfig = Field(
        default_factory=PolicyConfig,
        description="SLA layers. With `controller`, the controller's replace them (these "
        "hold until its first state, and alone for a router run without a controller).",
    )
    controller: ControllerLink | None = Field(
        None, description="Take policies and sites from the fleet controller."
    )
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="The deadline-aware scheduler."
    )
    backends: list[BackendConfig] = Field(min_length=1, description="Where requests go.")
    redis_url: str | None = Field(
        None,
        description="The shared Redis (answer cache, image store, idempotency records); "
        "None: in-memory images, no shared answers. FLEETVL_REDIS_URL overrides it.",
    )
    expiry_interval_s: float = Field(
        0.05, gt=0, description="How often queued requests past their deadline are dropped."
    )

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
