"""Ray Serve application running the full Qwen-VL in PyTorch with batched decode.

Not built yet: see the cloud-worker issue.
"""
