"""Finishing engines at build time: upscaler files recognised, exported to ONNX (parity checked) and installed."""
