"""The typed ``fleetvl up`` config (``examples/up.yaml``): ports, paths, resources, demo keys."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AgentDefaults", "CloudSettings", "PortOffsets", "RaySettings", "UpConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortOffsets(_Strict):
    router_http: int = Field(0, ge=0, description="Router OpenAI-compatible HTTP API.")
    router_grpc: int = Field(1, ge=0, description="Router gRPC (escalations, agent uplinks).")
    controller_http: int = Field(2, ge=0, description="Controller admin API and status page.")
    controller_grpc: int = Field(3, ge=0, description="Controller agent sessions.")
    serve_grpc: int = Field(4, ge=0, description="Ray Serve gRPC proxy (the cloud worker).")
    serve_http: int = Field(5, ge=0, description="Ray Serve HTTP proxy.")
    ray_gcs: int = Field(6, ge=0, description="Ray head node (GCS).")
    redis: int = Field(9, ge=0, description="Embedded Redis (only without FLEETVL_REDIS_URL).")
    agents: int = Field(10, ge=0, description="First site agent; the others follow in order.")


class RaySettings(_Strict):
    num_cpus: int = Field(2, ge=1, description="CPUs the local Ray cluster offers.")
    object_store_mb: int = Field(100, ge=80, description="Ray object store size (MiB).")


class CloudSettings(_Strict):
    max_slots: int = Field(4, ge=1, description="Concurrent requests in the cloud engine.")
    max_context: int = Field(2048, ge=256, description="Longest prompt + answer in tokens.")


class AgentDefaults(_Strict):
    engines: int = Field(1, ge=1, description="Engines per site agent.")
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per engine.")
    heartbeat_s: float = Field(2.0, gt=0, description="Agent heartbeat to the controller.")
    threshold_source: str = Field("raw", description="The agents' gate threshold source.")
    min_confidence: dict[str, float] = Field(
        default_factory=dict,
        description="Per-site min_confidence written over the fleet spec's site policy, for "
        "the trained demo models (edge_model / cloud_model).",
    )
    min_confidence_random: dict[str, float] = Field(
        default_factory=dict,
        description="The same for the random-weight fallback (the preset checkpoint): its "
        "answers' confidence sits far lower, so it needs bars of its own.",
    )


class UpConfig(_Strict):
    base_port: int = Field(18000, ge=1024, le=65000, description="Every port is base + offset.")
    fleet_spec: Path = Field(Path("fleet.yaml"), description="Fleet spec: one agent per site.")
    edge_model: Path | None = Field(
        None, description="Trained edge checkpoint (HF dir): exported to the agents' INT4 bundle."
    )
    cloud_model: Path | None = Field(
        None, description="Trained cloud checkpoint (HF dir), served by the cloud worker."
    )
    preset: str = Field(
        "tiny", description="Random-weight checkpoint preset: the fallback when the trained "
        "models are missing."
    )  # fmt: skip
    cache_dir: Path = Field(Path(".cache/up"), description="Built checkpoints and bundles.")
    run_dir: Path = Field(Path(".cache/up/run"), description="Generated configs and logs.")
    redis_url: str | None = Field(
        None, description="Redis to use (FLEETVL_REDIS_URL); None: start an embedded one."
    )
    ports: PortOffsets = Field(default_factory=PortOffsets, description="Port offsets.")
    ray: RaySettings = Field(default_factory=RaySettings, description="Local Ray cluster.")
    cloud: CloudSettings = Field(default_factory=CloudSettings, description="Cloud worker.")
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="Demo API key -> tenant for the router (never real)."
    )
    admin_token: str = Field(
        "up-demo-admin",
        description="Controller admin token (FLEETVL_CONTROLLER_ADMIN_TOKEN overrides the demo's).",
    )
    agent: AgentDefaults = Field(default_factory=AgentDefaults, description="Site agents.")

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> UpConfig:
        """Read ``path``; relative paths are relative to it. Overrides from the environment:
        FLEETVL_REDIS_URL, FLEETVL_UP_BASE_PORT, FLEETVL_CONTROLLER_ADMIN_TOKEN."""
        env = os.environ if environ is None else environ
        path = Path(path)
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        if env.get("FLEETVL_REDIS_URL"):
            raw["redis_url"] = env["FLEETVL_REDIS_URL"]
        if env.get("FLEETVL_CONTROLLER_ADMIN_TOKEN"):
            raw["admin_token"] = env["FLEETVL_CONTROLLER_ADMIN_TOKEN"]
        if env.get("FLEETVL_UP_BASE_PORT"):
            raw["base_port"] = int(env["FLEETVL_UP_BASE_PORT"])
        cfg = cls.model_validate(raw)
        base = path.resolve().parent
        paths = ("fleet_spec", "cache_dir", "run_dir", "edge_model", "cloud_model")
        return cfg.model_copy(
            update={k: (base / getattr(cfg, k)).resolve() for k in paths
                    if getattr(cfg, k) is not None}
        )  # fmt: skip

    def trained_models(self) -> tuple[Path, Path] | None:
        """(edge, cloud) checkpoint dirs when both are set and hold a ``config.json``; None:
        the demo falls back to the random-weight ``preset`` checkpoint."""
        e, c = self.edge_model, self.cloud_model
        if e is None or c is None or not (e / "config.json").is_file():
            return None
        return (e, c) if (c / "config.json").is_file() else None

    def bars(self, trained: bool) -> dict[str, float]:
        """The per-site ``min_confidence`` for the models in use."""
        return self.agent.min_confidence if trained else self.agent.min_confidence_random

    def port(self, name: str, index: int = 0) -> int:
        return self.base_port + getattr(self.ports, name) + index
