"""The site box: the ONNX Runtime engine (``engine/``), the exporter (``export/``), the agent
daemon with its gate, local API and store-and-forward spool (``agent/``), and the uplink."""
