"""Triton python-backend model, implemented in serve.triton.onnx_backend."""

import sys
from pathlib import Path

_PATHS = Path(__file__).resolve().parents[2] / "python_paths.txt"  # where Triton's starter imports from
if _PATHS.is_file():
    sys.path[:0] = [path for path in _PATHS.read_text().splitlines() if path not in sys.path]

from serve.triton.onnx_backend import OnnxRuntimeModel as TritonPythonModel  # noqa: E402, F401
