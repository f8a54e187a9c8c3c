"""``easel up --interpolator NAME=FILE``: each RIFE file read, exported to a frame engine and checked.

A Practical-RIFE ``flownet.pkl`` (v4.25/4.26) is read into the project's own IFNet
(:mod:`build_engines.finishing.ifnet`), exported with dynamic batch and sides, and checked against PyTorch on random
pairs of two sizes. A file that cannot be served is listed with why (``GET /v1/upscalers``, ``interpolators``), not
built. The upscalers' build (:func:`build_engines.finishing.upscalers.build_upscalers`) calls it, into the same
cached folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from build_engines.finishing.ifnet import Interpolator, read_flownet
from build_engines.onnx_export import export_graph
from build_engines.text_to_image.export import PARITY_TOLERANCE, ParityError
from serve.finishing.interpolators import INTERPOLATOR_PREFIX, SIDE_MULTIPLE, InterpolatorEntry, interpolator_spec
from serve.finishing.recognise import UnrecognisedUpscaler
from serve.listing import ERROR
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1
ARCHITECTURE = "RIFE 4.25"
CHECKED_SIDES = ((SIDE_MULTIPLE, SIDE_MULTIPLE), (SIDE_MULTIPLE, 2 * SIDE_MULTIPLE))
"""The (height, width) the export is checked at: its sides are dynamic, so two shapes."""


def build_interpolator(name: str, path: Path, folder: Path) -> InterpolatorEntry:
    """Export one interpolator into ``folder``; an entry with its error when it cannot be served (logged)."""
    try:
        export_interpolator(read_flownet(path), folder / f"{INTERPOLATOR_PREFIX}{name}" / ONNX)
    except (UnrecognisedUpscaler, OSError, onnx.checker.ValidationError, ParityError) as error:
        logger.warning("interpolator %s (%s) is not served: %s", name, path, error)
        return InterpolatorEntry(name, str(path), ERROR, error=str(error))
    logger.info("interpolator %s: %s from %s", name, ARCHITECTURE, path)
    return InterpolatorEntry(name, str(path), architecture=ARCHITECTURE)


def export_interpolator(net: torch.nn.Module, out_path: Path) -> float:
    """Export ``net`` (an IFNet) as the engine; its relative error against PyTorch over :data:`CHECKED_SIDES`."""
    module = Interpolator(net).eval()
    spec = interpolator_spec("check")
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(1, 6, SIDE_MULTIPLE, SIDE_MULTIPLE, generator=generator)
    export_graph(module, (sample, torch.full((1, 1), 0.5)), out_path, spec)
    session = make_session(out_path)
    worst = 0.0
    for height, width in CHECKED_SIDES:
        pair = torch.rand(2, 6, height, width, generator=generator)
        timestep = torch.rand(2, 1, generator=generator)
        with torch.no_grad():
            expected = module(pair, timestep).numpy()
        got = session.run(None, {"pair": pair.numpy(), "timestep": timestep.numpy()})[0]
        worst = max(worst, float(np.max(np.abs(got - expected))) / max(1.0, float(np.max(np.abs(expected)))))
    logger.info("  parity interpolator max relative |onnx - torch| = %.2e (bound %.0e)", worst, PARITY_TOLERANCE)
    if not worst <= PARITY_TOLERANCE:
        raise ParityError(f"ONNX differs from PyTorch by {worst:.2e} > {PARITY_TOLERANCE:.0e}")
    return worst
