"""The site box's configuration (``site.yaml``): who it is, its model, gate, uplink, spool.

Values may reference the environment (``${FLEETVL_ROUTER_KEY}``); secrets such as the
router key come from there or from a mounted file, never from a default. See
``examples/site.yaml`` for a documented example.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetvl.policy import PolicyOverride, SlaPolicy
from fleetvl.protocol.request import RequestLimits
from fleetvl.settings import load_settings
from fleetvl.vlm.gate import SIGNALS

__all__ = [
    "AgentConfig",
    "ControllerSection",
    "GateConfig",
    "RouterLink",
    "SitePolicies",
    "SpoolConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouterLink(_Strict):
    target: str = Field(description="host:port of the router's gRPC listener.")
    api_key: str | None = Field(None, description="Bearer key the router maps to the tenant.")
    model: str | None = Field(None, description="Model escalations ask the router for "
                              "(default: the agent's own model name).")  # fmt: skip
    tls_ca_file: str | None = Field(None, description="CA that signed the router's cert.")
    tls_cert_file: str | None = Field(None, description="This agent's certificate (mTLS).")
    tls_key_file: str | None = Field(None, description="This agent's private key (mTLS).")
    connect: bool = Field(
        True, description="Keep the outbound AgentConnect stream open (flow 4) and use it as "
        "the uplink's liveness signal."
    )  # fmt: skip
    backoff_s: float = Field(0.2, gt=0, description="First reconnect delay; doubles per try.")
    max_backoff_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")
    cloud_rtt_ms: float = Field(
        300.0, gt=0, description="Prior for an escalation's round trip until measured; the "
        "agent stops escalating when the remaining budget is below its current estimate."
    )  # fmt: skip
    keepalive_s: float = Field(
        1.0, gt=0, description="Ping the router this often on the uplink and escalation "
        "channels; a ping unanswered this long marks the uplink down (a hung router is "
        "noticed in seconds, not after a request's whole deadline).",
    )  # fmt: skip
    cache_probe_ms: float = Field(
        300.0, ge=0, description="Before the local model runs, ask the router's answer cache, "
        "waiting at most this long (digests only; never for edge_only); 0: never ask."
    )  # fmt: skip


class GateConfig(_Strict):
    signal: str = Field("mean_prob", description=f"Confidence signal: one of {SIGNALS}.")
    threshold_source: Literal["calibration", "raw"] = Field(
        "calibration",
        description="calibration: min_confidence is the accuracy released answers must reach "
        "on the bundle's calibration set, mapped to a threshold on the signal; raw: the "
        "signal's score is compared with min_confidence directly. Without a calibration file "
        "the raw comparison is used.",
    )
    early_escalation: bool = Field(
        True, description="Stop decoding as soon as the answer can no longer pass the gate "
        "(or the deadline cannot be met locally) and escalate at once."
    )  # fmt: skip
    frozen_after_s: float = Field(
        120.0, ge=0, description="A named source (the request's `source`) that has sent the "
        "identical image for this many seconds, at least 3 times, is a frozen camera: its "
        "questions are out of scope (part `frozen`), like a covered one. 0 turns the check off."
    )  # fmt: skip

    @model_validator(mode="after")
    def _known(self) -> GateConfig:
        if self.signal not in SIGNALS:
            raise ValueError(f"gate.signal {self.signal!r} is not one of {', '.join(SIGNALS)}")
        return self


class SpoolConfig(_Strict):
    path: Path = Field(Path("spool.sqlite"), description="SQLite file of the durable spool.")
    max_bytes: int = Field(256 << 20, ge=1024, description="Quota on waiting payload bytes.")
    ttl_s: float = Field(24 * 3600.0, gt=0, description="How long an escalation may wait.")
    keep_s: float = Field(24 * 3600.0, gt=0, description="How long answers stay pollable.")
    concurrency: int = Field(8, ge=1, le=256, description="Deliveries in flight at once.")
    retry_backoff_s: float = Field(0.5, gt=0, description="First redelivery delay.")
    max_retry_backoff_s: float = Field(60.0, gt=0, description="Longest redelivery delay.")
    attempt_timeout_s: float = Field(30.0, gt=0, description="Deadline of one delivery try.")


class SitePolicies(_Strict):
    """The SLA layers this site applies (the controller may push newer ones)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    global_: SlaPolicy = Field(
        default_factory=SlaPolicy, alias="global", description="The complete base policy."
    )
    tenant: PolicyOverride | None = Field(None, description="This site's tenant's layer.")
    site: PolicyOverride | None = Field(None, description="This site's own layer.")


class ControllerSection(_Strict):
    """The fleet controller this agent dials (``edge_agent.control``): policies, bundles."""

    target: str = Field(description="host:port of the controller's gRPC listener.")
    token: str | None = Field(None, description="Per-agent credential.")
    tls_ca_file: str | None = Field(None, description="CA that signed the controller's cert.")
    tls_cert_file: str | None = Field(None, description="This agent's certificate (mTLS).")
    tls_key_file: str | None = Field(None, description="This agent's private key (mTLS).")
    heartbeat_s: float = Field(5.0, gt=0, description="Heartbeat period.")
    bundle_dir: Path = Field(Path("bundles"), description="Where verified bundles unpack.")


class AgentConfig(_Strict):
    site: str = Field(min_length=1, pattern=r"^[\w.-]+$", description="This site's name.")
    tenant: str = Field("default", min_length=1, description="The tenant this site belongs to.")
    model: str = Field("edge", min_length=1, description="Model name clients ask for.")
    bundle: Path = Field(description="Edge bundle directory served locally.")
    engines: int = Field(1, ge=1, le=64, description="Engines = concurrent local requests.")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per engine.")
    max_queue: int = Field(64, ge=1, description="Local requests queued beyond the engines.")
    redis_url: str | None = Field(
        None, description="Redis for this box's prefix-KV and vision-embedding cache (the "
        "engines fetch or recompute by their cost model; entries per tenant). A site-local "
        "Redis, or the shared one where the uplink allows. None: no cache.",
    )  # fmt: skip
    redis_site_local: bool = Field(
        True, description="The Redis runs at the site: edge_only requests may use it too. "
        "False (a Redis beyond the site): edge_only requests never touch it.",
    )  # fmt: skip
    http_host: str = Field("127.0.0.1", description="Local API address.")
    http_port: int = Field(8090, ge=0, le=65535, description="Local API port (0: any).")
    allow_webhooks: bool = Field(
        False, description="Accept an x-fleetvl-webhook header on queued requests: the agent "
        "POSTs the answer there when delivered. Off by default: a webhook makes the agent "
        "call a URL a client chose."
    )  # fmt: skip
    limits: RequestLimits = Field(
        default_factory=RequestLimits, description="What one request may ask for (body, "
        "images, pixels, prompt length); the router checks the same limits the same way."
    )  # fmt: skip
    router: RouterLink | None = Field(None, description="The cloud uplink; None: offline box.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The confidence gate.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="Store-and-forward.")
    policies: SitePolicies = Field(default_factory=SitePolicies, description="SLA layers.")
    controller: ControllerSection | None = Field(None, description="Control-plane client.")

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
        """The YAML file read by the one settings convention (:mod:`fleetvl.settings`):
        ``${VAR}`` references expanded, then ``FLEETVL_EDGE_*`` variables on top
        (``FLEETVL_EDGE_HTTP_PORT=9000``; nested keys joined by ``__``:
        ``FLEETVL_EDGE_ROUTER__API_KEY``)."""
        return load_settings(cls, "edge", path, environ=environ)
