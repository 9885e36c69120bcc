"""The cloud engine: Qwen-VL on transformers with continuous batching (no Ray needed)."""

from cloud_worker.engine.engine import CloudEngine, CloudResult, EngineConfig, StreamEvent
from cloud_worker.engine.scope import ScopeExample, fit_scope, load_model_scope, write_scope

__all__ = [
    "CloudEngine",
    "CloudResult",
    "EngineConfig",
    "ScopeExample",
    "StreamEvent",
    "fit_scope",
    "load_model_scope",
    "write_scope",
]
