"""An image module exported to ONNX and checked against PyTorch: the upscalers' and the face restorers' one way."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from build_engines.onnx_export import export_graph
from build_engines.text_to_image.export import PARITY_TOLERANCE, ParityError
from serve.triton.onnx_backend import make_session

logger = logging.getLogger(__name__)


def export_checked(module: torch.nn.Module, out_path: Path, spec, side: int, output: str, what: str) -> float:
    """Export an image module (``side`` square, dynamic batch); its relative error against PyTorch on 2 images.

    Its inputs are ``spec``'s: the ``image``, and any other (a restorer's ``fidelity``) random in ``[0, 1]`` too.
    """

    def inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        shapes = {t.name: (3, side, side) if t.name == "image" else t.dims for t in spec.inputs}
        return {name: torch.rand(batch, *shape, generator=generator) for name, shape in shapes.items()}

    export_graph(module, tuple(inputs(1, 0).values()), out_path, spec)
    check = inputs(2, 1)
    with torch.no_grad():
        expected = module(*check.values()).numpy()
    got = make_session(out_path).run(None, {name: value.numpy() for name, value in check.items()})[0]
    relative = float(np.max(np.abs(got - expected))) / max(1.0, float(np.max(np.abs(expected))))
    logger.info("  parity %s max relative |onnx - torch| = %.2e (bound %.0e)", what, relative, PARITY_TOLERANCE)
    if not relative <= PARITY_TOLERANCE:
        raise ParityError(f"ONNX differs from PyTorch by {relative:.2e} > {PARITY_TOLERANCE:.0e}")
    return relative
