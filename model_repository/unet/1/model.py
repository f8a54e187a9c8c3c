"""Triton python-backend model: serves model.onnx beside this file with ONNX Runtime (see serve.triton)."""

from serve.triton.onnx_backend import OnnxRuntimeModel as TritonPythonModel  # noqa: F401
