"""The torch runtime's modules of a text-to-image model: each engine's, loaded from the folder's linked weights.

A folder built for the torch runtime (:mod:`serve.triton.torch_runtime`) holds the model's diffusers folder, linked
(``diffusers/``), and no graphs; each engine's ``torch.json`` names :func:`engine_module` as its loader, which loads the
module the family declares for the engine (the one its ONNX graph would be exported from).
"""

from __future__ import annotations

from pathlib import Path

import torch

from serve.text_to_image.engine_folder import DIFFUSERS, EngineFolder

LOADER = f"{__name__}:engine_module"
"""What a torch engine's ``torch.json`` names as its loader."""


def engine_module(folder: Path, engine: str, dtype: torch.dtype) -> torch.nn.Module:
    """Engine ``engine``'s module of the engine folder ``folder``, in ``dtype``, from its linked diffusers folder."""
    family = EngineFolder(folder).family
    return family.export_modules(folder / DIFFUSERS)[engine].load(dtype)
