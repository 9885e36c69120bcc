"""HF checkpoint -> ONNX edge bundle (needs the export extra: torch, transformers, onnx)."""
