"""Qwen-VL generation on ONNX Runtime sessions (no PyTorch at run time)."""

from edge_agent.engine.bundle import EdgeBundle, SessionConfig
from edge_agent.engine.cached import CachedEngine, CacheUse
from edge_agent.engine.engine import EdgeEngine, Generation
from edge_agent.engine.kv_arena import KVPrefix
from edge_agent.engine.types import CancelToken, GenerationResult, TokenEvent
from fleetvl.sampling import SamplingParams

__all__ = [
    "CacheUse",
    "CachedEngine",
    "CancelToken",
    "EdgeBundle",
    "EdgeEngine",
    "Generation",
    "GenerationResult",
    "KVPrefix",
    "SamplingParams",
    "SessionConfig",
    "TokenEvent",
]
