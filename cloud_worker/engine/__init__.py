"""The cloud engine: Qwen-VL on transformers with continuous batching (no Ray needed)."""

from cloud_worker.engine.engine import CloudEngine, CloudResult, EngineConfig, StreamEvent

__all__ = ["CloudEngine", "CloudResult", "EngineConfig", "StreamEvent"]
