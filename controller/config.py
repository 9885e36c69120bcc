"""Controller configuration: a YAML file read by the one settings convention
(:mod:`fleetvl.settings`), so ``FLEETVL_CONTROLLER_ADMIN_TOKEN`` (kept in a Secret by the Helm
chart) and ``FLEETVL_REDIS_URL`` override it. The admin token is required: none is ever
generated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from controller.spec import FleetSpec, load_spec
from fleetvl.settings import load_settings

__all__ = ["AlertsConfig", "ControllerConfig", "KubeConfig", "TlsConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    cert_file: str = Field(description="Server certificate (PEM) for the agents' gRPC port.")
    key_file: str = Field(description="Its private key (PEM).")
    client_ca_file: str | None = Field(
        None, description="Set: agents must present a certificate signed by this CA (mTLS)."
    )
    site_identity: bool = Field(
        False,
        description="With mTLS: the client certificate's common name or a DNS SAN must equal "
        "the site id the agent registers as (one site's certificate cannot speak for another).",
    )


class KubeConfig(_Strict):
    enabled: bool = Field(False, description="Watch EdgeSite/SlaPolicy custom resources.")
    namespace: str = Field("default", description="Namespace of the custom resources.")
    host: str | None = Field(
        None, description="API server URL; None: in-cluster service account, then kubeconfig."
    )
    token: SecretStr | None = Field(None, description="Bearer token for `host`.")
    group: str = Field("fleetvl.io", description="API group of the custom resources.")
    version: str = Field("v1alpha1", description="API version of the custom resources.")


class AlertsConfig(_Strict):
    """Site health alerts, computed from the per-source verdicts in agents' heartbeats."""

    out_of_scope_min: int = Field(
        20,
        ge=1,
        description="Alert when at least this many of a source's last `out_of_scope_window` "
        "frames were out of scope (covered, dark, blurred or misaimed camera, another scene). "
        "A source with fewer frames than this never alerts.",
    )
    out_of_scope_window: int = Field(
        25,
        ge=1,
        le=10_000,
        description="How many of a source's latest frames the rule looks at. Agents keep 25 "
        "per source by default; when they keep more, only the frames that may fall in this "
        "window are counted (the count is a lower bound).",
    )

    @model_validator(mode="after")
    def _min_fits_window(self) -> AlertsConfig:
        if self.out_of_scope_min > self.out_of_scope_window:
            raise ValueError(
                f"alerts.out_of_scope_min ({self.out_of_scope_min}) is larger than "
                f"alerts.out_of_scope_window ({self.out_of_scope_window}): no source could "
                "ever alert; lower the minimum or widen the window"
            )
        return self


class ControllerConfig(_Strict):
    http_host: str = Field("127.0.0.1", description="Admin API / status page listen address.")
    http_port: int = Field(8090, ge=0, le=65535, description="Admin API port.")
    grpc_host: str = Field("127.0.0.1", description="Agent sessions listen address.")
    grpc_port: int = Field(50061, ge=0, le=65535, description="Agent sessions (gRPC) port.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Hard state store.")
    namespace: str = Field(
        "default", pattern=r"^[\w.-]+$", description="Redis key namespace of this fleet."
    )
    admin_token: SecretStr = Field(description="Bearer token for the admin API (required).")
    router_token: SecretStr | None = Field(
        None,
        description="Bearer token routers present to watch the routing state (SLA layers, "
        "sites); None: the admin token.",
    )
    status_page_public: bool = Field(
        False, description="Serve the status page (read-only) without the admin token."
    )
    spec_file: str | None = Field(None, description="Fleet spec YAML (the ConfigMap's file).")
    spec: FleetSpec | None = Field(None, description="Inline fleet spec (instead of spec_file).")
    bundle_dir: str = Field(".cache/controller/bundles", description="Bundle store folder.")
    public_url: str | None = Field(
        None, description="Base URL agents download bundles from; default: the admin listener."
    )
    heartbeat_s: float = Field(5.0, gt=0, description="Heartbeat interval agents are told.")
    stale_after_s: float = Field(
        20.0, gt=0, description="A site without a heartbeat for this long is shown unhealthy."
    )
    rollout_tick_s: float = Field(1.0, gt=0, description="How often rollouts are evaluated.")
    tls: TlsConfig | None = Field(None, description="TLS/mTLS for the agents' gRPC port.")
    kube: KubeConfig = Field(default_factory=KubeConfig, description="Custom-resource watch.")
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig, description="Site health alert rules (docs/controller.md)."
    )

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, str] | None = None) -> ControllerConfig:
        """The YAML file by the one settings convention (:mod:`fleetvl.settings`): ``${VAR}``
        expanded, ``FLEETVL_CONTROLLER_*`` on top (``FLEETVL_CONTROLLER_ADMIN_TOKEN``),
        ``FLEETVL_REDIS_URL`` as ``redis_url``; a relative ``spec_file`` is relative to it."""
        cfg = load_settings(cls, "controller", path, environ=env)
        if cfg.spec_file and not Path(cfg.spec_file).is_absolute():
            cfg.spec_file = str(Path(path).parent / cfg.spec_file)
        return cfg

    def fleet_spec(self) -> FleetSpec:
        if self.spec is not None:
            return self.spec
        if self.spec_file:
            return load_spec(self.spec_file)
        return FleetSpec()
