"""Moderation engines at build time: the image safety checker made, exported to ONNX (parity checked), installed."""
