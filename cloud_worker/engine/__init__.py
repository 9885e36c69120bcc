"""The cloud engine: Qwen-VL on transformers with continuous batching (no Ray needed)."""

from cloud_worker.engine.engine import CloudEngine, CloudResult, CloudStream, EngineConfig
from cloud_worker.engine.scope import ScopeExample, fit_scope, load_model_scope, write_scope
from fleetvl.engines import TokenEvent

__all__ = [
    "CloudEngine",
    "CloudResult",
    "CloudStream",
    "EngineConfig",
    "ScopeExample",
    "TokenEvent",
    "fit_scope",
    "load_model_scope",
    "write_scope",
]
