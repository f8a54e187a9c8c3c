"""The torch runtime's modules of a text-to-image model: each engine's, loaded from the folder's linked weights.

A folder built for the torch runtime (:mod:`serve.triton.torch_runtime`) holds the model's diffusers folder, linked
(``diffusers/``), the outside diffusers folders some engines load from, linked by engine (``linked/controlnet_<NAME>/``:
a ``ControlNetModel``; ``linked/vae_decoder/``: a tiny ``AutoencoderTiny`` decoder served as the model's), and no
graphs; each engine's ``torch.json`` names :func:`engine_module` as its loader, which loads the module the family
declares for the engine (the one its ONNX graph would be exported from): with ControlNets, the UNet takes their
residuals as its last inputs, as the ONNX path's ControlNet-ready UNet does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from serve.text_to_image.engine_folder import DIFFUSERS, EngineFolder
from serve.text_to_image.families import Family
from serve.text_to_image.families.exports import ExportModule, UnetModule, VaeDecoderModule, diffusers_model
from serve.text_to_image.spec import CONTROLNET_PREFIX, UNET, VAE_DECODER

LOADER = f"{__name__}:engine_module"
"""What a torch engine's ``torch.json`` names as its loader."""
LINKED = "linked"
"""The folder of outside diffusers folders an engine loads from (a ControlNet's, a tiny VAE decoder's), by engine."""


def engine_module(folder: Path, engine: str, dtype: torch.dtype) -> torch.nn.Module:
    """Engine ``engine``'s module of the engine folder ``folder``, in ``dtype``, from its linked diffusers folders."""
    return engine_modules(EngineFolder(folder).family, folder)[engine].load(dtype)


def linked_engines(family: Family) -> tuple[str, ...]:
    """The engines of ``family`` loaded from an outside folder linked under :data:`LINKED`: its ready ControlNets."""
    return tuple(f"{CONTROLNET_PREFIX}{name}" for name in family.controlnets.ready)


def engine_modules(family: Family, folder: Path) -> dict[str, ExportModule]:
    """How to load each of ``family``'s engines out of the engine folder ``folder`` (nothing is loaded here).

    The model's own from ``diffusers/``; each ready ControlNet from ``linked/controlnet_<NAME>/``, and then a UNet
    taking their residuals; the tiny VAE decoder from ``linked/vae_decoder/`` where the folder has one.
    """
    modules = family.export_modules(folder / DIFFUSERS)
    controlnets = linked_engines(family)
    if controlnets:
        modules[UNET] = controlnet_ready(modules[UNET], len(family.dims.residuals))
        modules |= {engine: family.controlnet_export(folder / LINKED / engine) for engine in controlnets}
    tiny = folder / LINKED / VAE_DECODER
    if tiny.is_dir():
        modules[VAE_DECODER] = tiny_vae_decoder(tiny)
    return modules


def tiny_vae_decoder(folder: Path) -> ExportModule:
    """A diffusers ``AutoencoderTiny`` (TAESD) as the ``vae_decoder`` engine: the same latents in, image out."""
    return ExportModule(lambda dtype: VaeDecoderModule(diffusers_model("AutoencoderTiny", folder, dtype)))


def controlnet_ready(source: ExportModule, residuals: int) -> ExportModule:
    """``source`` (a UNet engine's module) taking ``residuals`` ControlNet residuals as its last inputs."""

    def load(dtype: torch.dtype) -> torch.nn.Module:
        module = source.load(dtype)
        return ControlNetReadyUnet(module, next(m for m in module.modules() if isinstance(m, UnetModule)), residuals)

    return ExportModule(load, source.keep_fp32)


class ControlNetReadyUnet(torch.nn.Module):
    """A UNet engine's module taking ``residuals`` ControlNet residuals as its last inputs (zeros: exactly the UNet).

    The residuals reach ``unet`` (the :class:`UnetModule` inside ``module``) for the call, as diffusers' ControlNet
    pipelines pass them: its down blocks' then its mid block's.
    """

    def __init__(self, module: torch.nn.Module, unet: UnetModule, residuals: int) -> None:
        super().__init__()
        self.module, self.count = module, residuals
        self.__dict__["unet_module"] = unet  # not a second child: the module tree stays one chain

    def forward(self, *args):
        """The noise prediction with the residuals added to the UNet's down and mid blocks."""
        inputs, residuals = args[: -self.count], args[-self.count :]
        self.unet_module.residuals = residuals
        try:
            return self.module(*inputs)
        finally:
            self.unet_module.residuals = None
