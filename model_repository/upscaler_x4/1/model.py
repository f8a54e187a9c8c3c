"""Triton python-backend model, implemented in serve.triton.onnx_backend."""

from serve.triton.onnx_backend import OnnxRuntimeModel as TritonPythonModel  # noqa: F401
