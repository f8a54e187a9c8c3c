"""Adapter-ready engines at build time: which adapters to build for, and the export modules made to take them.

LoRA: every Linear and Conv2d of the text encoder(s) and UNet gets a slot (:mod:`.lora_layers`). IP-Adapter: the UNet
is loaded with the adapter and takes per-row scales, and the adapter's image encoder becomes an engine
(:mod:`.ip_adapter`). What the built engines then take is :class:`serve.adapters.support.AdapterSupport`, saved beside
them as ``adapters.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ModelMixin
from transformers import PreTrainedModel

from build_engines.text_to_image.ip_adapter import IpAdapterFolder, IpReadyUnet, load_image_encoder, load_into_unet
from build_engines.text_to_image.lora_layers import lora_ready, save_slots
from serve.adapters.ip_adapter import IMAGE_EMBEDS, IMAGE_ENCODER, IpAdapterInfo
from serve.adapters.lora_files import weightless
from serve.adapters.support import AdapterSupport
from serve.files import content_hash
from serve.text_to_image.families.exports import ExportModule
from serve.triton.engine_files import LORA_SLOTS


@dataclass(frozen=True)
class AdapterBuild:
    """What adapters to build engines for: LoRA slots, and the IP-Adapter folder (None: none)."""

    lora: bool = False
    ip_adapter: Path | None = None

    def key(self) -> str:
        """Part of the engine cache key: "" without adapters."""
        parts = (["lora"] if self.lora else []) + (
            [f"ip{content_hash(self.ip_adapter)[:12]}"] if self.ip_adapter else []
        )
        return "-".join(parts)


def ip_info(build: AdapterBuild, model_dir: Path) -> IpAdapterInfo | None:
    """What the IP-Adapter of ``build`` makes ``model_dir``'s engines take (read on a weightless UNet)."""
    if build.ip_adapter is None:
        return None
    folder = IpAdapterFolder.read(build.ip_adapter)
    layers, hidden_states = load_into_unet(weightless(model_dir, "unet"), folder)
    config = json.loads((folder.image_encoder / "config.json").read_text())
    vision = config.get("vision_config", config)
    if hidden_states:
        tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
        shape = (1, tokens, vision["hidden_size"])
    else:
        shape = (1, config.get("projection_dim", vision.get("projection_dim")))
    return IpAdapterInfo(str(folder.weights), int(vision["image_size"]), shape, hidden_states, layers)


def adapter_modules(
    modules: dict, build: AdapterBuild, support: AdapterSupport, lora_engines: tuple[str, ...], between=None
) -> dict:
    """The family's export modules made adapter-ready, plus the image encoder.

    LoRA slots go into ``lora_engines`` (the family's), the IP-Adapter into the UNet. ``between``: what else changes
    the modules after the IP-Adapter's UNet is made and before LoRA slots wrap them (ControlNet residual inputs,
    which the specs order between the two).
    """
    modules = dict(modules)
    ip = support.ip_adapter
    if ip is not None:
        folder = IpAdapterFolder.read(build.ip_adapter)
        unet_source = modules["unet"]

        def unet_with_ip(dtype: torch.dtype) -> torch.nn.Module:
            module = unet_source.load(dtype)
            load_into_unet(module.unet, folder)
            module.unet.to(dtype)
            module.added = (*module.added, IMAGE_EMBEDS)
            return IpReadyUnet(module, module.unet.ip_scales)

        modules["unet"] = ExportModule(unet_with_ip, unet_source.keep_fp32)
        modules[IMAGE_ENCODER] = ExportModule(
            lambda dtype: load_image_encoder(folder.image_encoder, dtype, ip.hidden_states)
        )
    if between is not None:
        modules = between(modules)
    if support.lora:
        for name in lora_engines:
            if name in modules:
                modules[name] = _with_slots(modules[name])
    return modules


def _with_slots(source: ExportModule) -> ExportModule:
    def load(dtype: torch.dtype) -> torch.nn.Module:
        module = source.load(dtype)
        ready, slots, extras = lora_ready(module, inner_model(module))
        ready.graph_extras = extras
        ready.side_files = {LORA_SLOTS: lambda path: save_slots(slots, path)}
        return ready

    return ExportModule(load, source.keep_fp32)


def inner_model(module: torch.nn.Module) -> torch.nn.Module:
    """The diffusers/transformers model inside an engine's export wrapper (the one that has the layers)."""
    while True:
        children = [child for child in module.children() if not isinstance(child, torch.nn.Identity)]
        if len(children) != 1 or not _is_wrapper(module):
            return module
        module = children[0]


def _is_wrapper(module: torch.nn.Module) -> bool:
    return not isinstance(module, ModelMixin | PreTrainedModel)
