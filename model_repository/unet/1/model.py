"""Triton python-backend model, implemented in serve.adapters.backend."""

from serve.adapters.backend import LoraOnnxModel as TritonPythonModel  # noqa: F401
