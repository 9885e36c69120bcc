"""The cloud tier: the full Qwen-VL in PyTorch with continuous batching, served by Ray Serve.

``cloud_worker.engine`` imports neither Ray nor the service stack, so it can be benchmarked
alone (the GPU machine has torch and transformers only); ``cloud_worker.serve_app`` wraps it.
"""
