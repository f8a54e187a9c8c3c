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
    """Export an image module (``side`` square, dynamic batch); its relative error against PyTorch on 2 images."""
    sample = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    export_graph(module, (sample,), out_path, spec)
    with torch.no_grad():
        check = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
        expected = module(check).numpy()
    got = make_session(out_path).run(None, {"image": check.numpy()})[0]
    relative = float(np.max(np.abs(got - expected))) / max(1.0, float(np.max(np.abs(expected))))
    logger.info("  parity %s max relative |onnx - torch| = %.2e (bound %.0e)", what, relative, PARITY_TOLERANCE)
    if not relative <= PARITY_TOLERANCE:
        raise ParityError(f"ONNX differs from PyTorch by {relative:.2e} > {PARITY_TOLERANCE:.0e}")
    return relative
