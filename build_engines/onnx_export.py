"""The one way a module becomes an ONNX graph here, and where a built engine is cached by what made it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import torch

from serve.paths import easel_home
from serve.triton.spec import ModelSpec

OPSET = 17
"""The ONNX opset every graph is exported at."""


def export_graph(module: torch.nn.Module, example: tuple, out_path: Path, spec: ModelSpec) -> None:
    """``module`` traced on ``example`` to an ONNX graph at ``out_path``: ``spec``'s tensor names and dynamic axes."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(out_path),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.onnx_dynamic_axes(),
            opset_version=OPSET,
            dynamo=False,
        )


def engine_cache(kind: str, made_from: list) -> Path:
    """The cache folder of a built engine: its ``kind`` and a hash of what made it and of the exporter's versions."""
    key = json.dumps([*made_from, OPSET, torch.__version__.split("+")[0], onnx.__version__])
    return easel_home() / "engines" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
