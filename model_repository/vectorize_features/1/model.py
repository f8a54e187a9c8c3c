"""Triton python-backend model, implemented in serve.vectorize.triton_features."""

from serve.vectorize.triton_features import FeaturesModel as TritonPythonModel  # noqa: F401
