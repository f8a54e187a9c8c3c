"""``easel up --face-restorer NAME=FILE``: each file recognised, exported to a face engine and checked.

A ``.pth``/``.safetensors`` GFPGAN v1 clean or CodeFormer file is read into the project's own module
(:mod:`serve.finishing.face_architecture`, :mod:`serve.finishing.codeformer_architecture`), wrapped so that the
engine takes and gives RGB in ``[0, 1]`` (CodeFormer's with a fidelity per crop), exported at 512x512 with a dynamic
batch axis, and checked against PyTorch on random crops. A file that cannot be served is
listed with why (``GET /v1/upscalers``), not built. The upscalers' build
(:func:`build_engines.finishing.upscalers.build_upscalers`) calls it, into the same cached folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import torch

from build_engines.finishing.checked_export import export_checked
from build_engines.text_to_image.export import ParityError
from serve.finishing.recognise import UnrecognisedUpscaler, read_state, recognise
from serve.finishing.restorers import FACE_SIDE, RESTORER_PREFIX, TAKES_FIDELITY, RestorerEntry, restorer_spec
from serve.listing import ERROR
from serve.triton.engine_files import ONNX

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1


class UnitRange(torch.nn.Module):
    """A restorer working in ``[-1, 1]`` seen from ``[0, 1]``, as the engine's callers hold pixels."""

    def __init__(self, restorer: torch.nn.Module) -> None:
        super().__init__()
        self.restorer = restorer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The restored crop in ``[0, 1]`` (not clamped: the paste clamps)."""
        return (self.restorer(image * 2 - 1) + 1) / 2


class FidelityUnitRange(UnitRange):
    """A restorer that takes a fidelity (CodeFormer), seen from ``[0, 1]``, with the fidelity as ``N x 1``."""

    def forward(self, image: torch.Tensor, fidelity: torch.Tensor) -> torch.Tensor:
        """The restored crop in ``[0, 1]`` at each crop's fidelity."""
        return (self.restorer(image * 2 - 1, fidelity[:, 0]) + 1) / 2


def build_restorer(name: str, path: Path, folder: Path) -> RestorerEntry:
    """Export one restorer into ``folder``; an entry with its error when it cannot be served (logged)."""
    try:
        state = read_state(path)
        recognised = recognise(state)
        if not recognised.restores_faces:
            raise UnrecognisedUpscaler(f"{path}: a {recognised.kind} x{recognised.scale} upscaler, not a face restorer")
        if recognised.arguments.get("out_size", FACE_SIDE) != FACE_SIDE:
            raise UnrecognisedUpscaler(f"{path}: restores {recognised.arguments['out_size']}px faces, not {FACE_SIDE}")
        fidelity = recognised.kind in TAKES_FIDELITY
        export_restorer(recognised.module(state), folder / f"{RESTORER_PREFIX}{name}" / ONNX, fidelity)
    except (UnrecognisedUpscaler, OSError, onnx.checker.ValidationError, ParityError) as error:
        logger.warning("face restorer %s (%s) is not served: %s", name, path, error)
        return RestorerEntry(name, str(path), ERROR, error=str(error))
    logger.info("face restorer %s: %s from %s", name, recognised.kind, path)
    return RestorerEntry(name, str(path), architecture=recognised.kind)


def export_restorer(restorer: torch.nn.Module, out_path: Path, fidelity: bool = False) -> float:
    """Export ``restorer`` (``[-1, 1]`` in and out) as a ``[0, 1]`` engine; its relative error against PyTorch."""
    module = (FidelityUnitRange if fidelity else UnitRange)(restorer).eval()
    spec = restorer_spec("check", fidelity=fidelity)
    return export_checked(module, out_path, spec, FACE_SIDE, "restored", "restorer")
