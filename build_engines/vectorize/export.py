"""ONNX export of the vectorize models with their Triton specs' names and dynamic axes, parity-checked."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from build_engines.onnx_export import export_graph
from serve.triton.onnx_backend import make_session
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The exported ONNX graph disagrees with PyTorch beyond the tolerance."""


def _random_inputs(spec: ModelSpec, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.random((batch, *t.dims)).astype(t.numpy_dtype) * 1.2 - 0.1 for t in spec.inputs]


def export_onnx(module: nn.Module, spec: ModelSpec, path: Path, seed: int = 0, tolerance: float = 1e-3) -> float:
    """Export ``module`` to ``path`` (legacy exporter, opset 17) and compare with PyTorch on fresh inputs.

    Args:
        module: Takes the spec's inputs in order, returns its outputs in order.
        spec: The model's Triton I/O declaration (names, dynamic axes).
        path: Output ``.onnx`` file.
        seed: Seed for the parity inputs.
        tolerance: Largest accepted max abs difference.

    Returns:
        The max abs difference (relative where an output exceeds 1) over all outputs and two batch sizes.

    Raises:
        ParityError: The difference exceeds ``tolerance``.
    """
    module = module.eval()
    rng = np.random.default_rng(seed)
    export_graph(module, tuple(torch.as_tensor(a) for a in _random_inputs(spec, 2, rng)), path, spec)
    session = make_session(path, intra_op_threads=1)
    worst = 0.0
    for batch in (1, 37):
        inputs = _random_inputs(spec, batch, rng)
        with torch.no_grad():
            expected = module(*(torch.as_tensor(a) for a in inputs))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run([t.name for t in spec.outputs], {t.name: a for t, a in zip(spec.inputs, inputs, strict=True)})
        for e, g in zip(expected, got, strict=True):
            if tuple(e.shape) != g.shape:
                raise ParityError(f"{spec.name}: shape {g.shape} from ONNX, {tuple(e.shape)} from PyTorch")
            scale = np.maximum(1.0, np.abs(e.numpy()))  # relative for large outputs such as ln(bytes)
            worst = max(worst, float((np.abs(e.numpy() - g) / scale).max()))
    logger.info("%s: exported %s, max abs error vs PyTorch %.2e", spec.name, path, worst)
    if not worst <= tolerance:
        raise ParityError(f"{spec.name}: ONNX differs from PyTorch by {worst:.3e} (tolerance {tolerance:.1e})")
    return worst
