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


def rename_io(model: onnx.ModelProto, renames: dict[str, str]) -> onnx.ModelProto:
    """``model`` with its graph inputs and outputs renamed as ``renames`` says (old -> new), in place; the model."""
    for value in (*model.graph.input, *model.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    return model


def engine_cache(kind: str, made_from: list) -> Path:
    """The cache folder of a built engine: its ``kind`` and a hash of what made it and of the exporter's versions."""
    key = json.dumps([*made_from, OPSET, torch.__version__.split("+")[0], onnx.__version__])
    return easel_home() / "engines" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
