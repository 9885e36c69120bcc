"""The site box: ONNX Runtime engine today; gate, local API and spool in later issues."""
