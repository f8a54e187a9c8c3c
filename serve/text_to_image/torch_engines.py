"""The torch runtime's modules of a text-to-image model: each engine's, loaded from the folder's linked weights.

A folder built for the torch runtime (:mod:`serve.triton.torch_runtime`) holds the model's diffusers folder, linked
(``diffusers/``), the outside diffusers folders some engines load from, linked by engine (``linked/controlnet_<NAME>/``:
a ``ControlNetModel``; ``linked/vae_decoder/``: a tiny ``AutoencoderTiny`` decoder served as the model's), and no
graphs; each engine's ``torch.json`` names :func:`engine_module` as its loader, which loads the module the family
declares for the engine (the one its ONNX graph would be exported from): with ControlNets, the UNet takes their
residuals as its last inputs, as the ONNX path's ControlNet-ready UNet does; built LoRA-ready, the text encoders and
the UNet take LoRA banks as the ONNX path's LoRA-ready graphs do (the same layers: ``lora_scale`` per row, then each
slot's bank, shared by the rows, :func:`lora_fields`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from serve.adapters.lora import SCALE_INPUT, Slot, bank_names
from serve.text_to_image.engine_folder import DIFFUSERS, EngineFolder
from serve.text_to_image.families import Family
from serve.text_to_image.families.exports import (
    ExportModule,
    UnetModule,
    VaeDecoderModule,
    diffusers_model,
    with_lora_slots,
)
from serve.text_to_image.spec import CONTROLNET_PREFIX, UNET, VAE_DECODER

LOADER = f"{__name__}:engine_module"
"""What a torch engine's ``torch.json`` names as its loader."""
LINKED = "linked"
"""The folder of outside diffusers folders an engine loads from (a ControlNet's, a tiny VAE decoder's), by engine."""
LORA_RANKS = (1, 64)
"""The bank ranks a LoRA-ready denoiser's buckets are captured at, every slot's bank zero-padded to one: 1 for calls
without adapters (a zero column), 64 for calls whose adapters together hold up to 64 ranks in each layer; more run
eager (logged once per shape, counted)."""
LORA_COLUMNS = (8,)
"""The adapters one call's rows may weigh (``lora_scale``'s columns, zero-padded) within a bucket; more run eager."""
RANK_AXIS, LORAS_AXIS = "lora_rank", "loras"


def engine_module(folder: Path, engine: str, dtype: torch.dtype) -> torch.nn.Module:
    """Engine ``engine``'s module of the engine folder ``folder``, in ``dtype``, from its linked diffusers folders."""
    return engine_modules(EngineFolder(folder).family, folder)[engine].load(dtype)


def linked_engines(family: Family) -> tuple[str, ...]:
    """The engines of ``family`` loaded from an outside folder linked under :data:`LINKED`: its ready ControlNets."""
    return tuple(f"{CONTROLNET_PREFIX}{name}" for name in family.controlnets.ready)


def engine_modules(family: Family, folder: Path) -> dict[str, ExportModule]:
    """How to load each of ``family``'s engines out of the engine folder ``folder`` (nothing is loaded here).

    The model's own from ``diffusers/``; each ready ControlNet from ``linked/controlnet_<NAME>/``, and then a UNet
    taking their residuals; the tiny VAE decoder from ``linked/vae_decoder/`` where the folder has one; built
    LoRA-ready, the family's LoRA engines with their slots (after the residuals, as the ONNX path's).
    """
    modules = family.export_modules(folder / DIFFUSERS)
    controlnets = linked_engines(family)
    if controlnets:
        modules[UNET] = controlnet_ready(modules[UNET], len(family.dims.residuals))
        modules |= {engine: family.controlnet_export(folder / LINKED / engine) for engine in controlnets}
    if family.adapters.lora:
        modules |= {name: with_lora_slots(modules[name]) for name in family.lora_ready_engines if name in modules}
    tiny = folder / LINKED / VAE_DECODER
    if tiny.is_dir():
        modules[VAE_DECODER] = tiny_vae_decoder(tiny)
    return modules


def lora_fields(slots: Sequence[Slot]) -> dict[str, tuple]:
    """What a LoRA-ready engine's ``torch.json`` adds to its tensors (:class:`serve.triton.torch_runtime.TorchEngine`).

    ``lora_scale`` after its inputs (per row, its axis the call's adapters), each slot's bank shared (at rank 1: the
    bank of a call without adapters), their rank and adapter axes padded to :data:`LORA_RANKS` and
    :data:`LORA_COLUMNS`.
    """
    shared, axes = [], []
    for index, slot in enumerate(slots):
        down, up, column = bank_names(index)
        shared += [(down, "float32", slot.down_shape(1)), (up, "float32", slot.up_shape(1)), (column, "int64", (1,))]
        rest = ("",) * (len(slot.down_shape(1)) - 2)
        axes += [(RANK_AXIS, "", *rest), ("", RANK_AXIS, *rest), (RANK_AXIS,)]
    return {
        "inputs": ((SCALE_INPUT, "float32", (1,)),),
        "axes": ((LORAS_AXIS,),),
        "shared": tuple(shared),
        "shared_axes": tuple(axes),
        "padded": ((RANK_AXIS, LORA_RANKS), (LORAS_AXIS, LORA_COLUMNS)),
    }


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
