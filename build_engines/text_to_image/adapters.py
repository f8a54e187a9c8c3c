"""Adapter-ready engines at build time: which adapters to build for, and the export modules made to take them.

LoRA: every Linear and Conv2d of the text encoder(s) and UNet gets a slot (:mod:`serve.adapters.lora_layers`, the
torch runtime's too). IP-Adapter: the UNet is loaded with the adapter and takes per-row scales, and the adapter's
image encoder becomes an engine (:mod:`.ip_adapter`). What the built engines then take is
:class:`serve.adapters.support.AdapterSupport`, saved beside them as ``adapters.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from build_engines.text_to_image.ip_adapter import (
    IpAdapterError,
    IpAdapterFolder,
    IpReadyUnet,
    layer_level,
    load_image_encoder,
    load_into_unet,
)
from serve.adapters.ip_adapter import (
    IMAGE,
    IMAGE_EMBEDS,
    IMAGE_ENCODER,
    INSTANTID,
    MAX_REFERENCES,
    IpAdapterInfo,
    face_lora,
)
from serve.adapters.lora import MOTION_UNET_PREFIX
from serve.adapters.lora_files import weightless
from serve.adapters.support import AdapterSupport
from serve.files import content_hash
from serve.text_to_image.families.exports import ExportModule, with_lora_slots

IP_EXPORT = 5
"""The IP-Adapter engines' export version (part of the engine cache key): bumped when their graph or files change
(3: a FaceID's LoRA kept beside the engines; 4: a FaceID Plus's encoder states as inputs; an InstantID's folder adds
its IdentityNet, keyed by the folder's content; 5: the motion UNets take the IP inputs too)."""
LORA_EXPORT = 2
"""The LoRA layers' export version (part of the engine cache key): 2 selects rows, where 1 scaled them by 0."""


@dataclass(frozen=True)
class AdapterBuild:
    """What adapters to build engines for: LoRA slots, and the IP-Adapter folder (None: none)."""

    lora: bool = False
    ip_adapters: dict[str, Path] = field(default_factory=dict)  # name -> IP-Adapter folder, in the inputs' order

    def key(self) -> str:
        """Part of the engine cache key: "" without adapters."""
        parts = [f"lora{LORA_EXPORT}"] if self.lora else []
        if self.ip_adapters:
            named = ",".join(f"{name}={content_hash(folder)}" for name, folder in self.ip_adapters.items())
            parts.append(f"ip{IP_EXPORT}x{MAX_REFERENCES}r{hashlib.sha256(named.encode()).hexdigest()[:12]}")
        return "-".join(parts)

    def ip_folders(self) -> list[IpAdapterFolder]:
        """The IP-Adapter folders, read (:class:`IpAdapterError` names what is wrong)."""
        return [IpAdapterFolder.read(folder) for folder in self.ip_adapters.values()]


def ip_info(build: AdapterBuild, model_dir: Path) -> IpAdapterInfo | None:
    """What the IP-Adapter of ``build`` makes ``model_dir``'s engines take (read on a weightless UNet)."""
    if not build.ip_adapters:
        return None
    folders = build.ip_folders()
    unet = weightless(model_dir, "unet")
    processors = list(unet.attn_processors)
    for name, folder in zip(build.ip_adapters, folders, strict=True):
        if folder.face_id and folder.lora(processors) and not build.lora:
            why = "ships a LoRA, drawn with it: serve the model LoRA-ready (--loras MODEL=DIR; an empty folder will do)"
            raise IpAdapterError(f"IP-Adapter FaceID {name} ({folder.weights}) {why}")
    layers, hidden_states = load_into_unet(unet, folders)
    # The adapters that read the image encoder: its output is one for all (the first's encoder, as diffusers)
    encoded = [(f, f.kind != IMAGE or h) for f, h in zip(folders, hidden_states, strict=True) if f.image_encoder]
    if len({states for _, states in encoded}) > 1:
        why = "by image embeddings and by hidden states (Plus, FaceID Plus) cannot be mixed"
        raise IpAdapterError(f"IP-Adapters read {why}")
    image_size, encoder_output = 0, ()
    if encoded:
        config = json.loads((encoded[0][0].image_encoder / "config.json").read_text())
        vision = config.get("vision_config", config)
        image_size = int(vision["image_size"])
        if encoded[0][1]:
            encoder_output = ((vision["image_size"] // vision["patch_size"]) ** 2 + 1, vision["hidden_size"])
        else:
            encoder_output = (config.get("projection_dim", vision.get("projection_dim")),)
    return IpAdapterInfo(
        names=tuple(build.ip_adapters),
        weights=tuple(str(folder.weights) for folder in folders),
        image_size=image_size,
        embeds_shapes=tuple(_face_shape(folder) if folder.face_id else encoder_output for folder in folders),
        hidden_states=bool(encoded and encoded[0][1]),
        layers=layers,
        levels=tuple(layer_level(unet, name) for name in layers),
        kinds=tuple(folder.kind for folder in folders),
        encoder_output=encoder_output,
    )


def write_face_loras(folder: Path, build: AdapterBuild, model_dir: Path) -> None:
    """Save the LoRA each FaceID of ``build`` ships with in ``folder`` (``NAME.lora.safetensors``), if any has one.

    Kept beside the engines (:meth:`serve.text_to_image.engine_folder.EngineFolder.face_loras`), where the stack's
    LoRA registry reads them; keyed as ``load_ip_adapter`` hands them to ``load_lora_weights``.
    """
    from safetensors.torch import save_file

    processors = list(weightless(model_dir, "unet").attn_processors) if build.ip_adapters else []
    for name, folder_in in zip(build.ip_adapters, build.ip_folders(), strict=True):
        lora = folder_in.lora(processors) if folder_in.face_id else {}
        if lora:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(lora, folder / f"{face_lora(name)}.safetensors")


def _face_shape(folder: IpAdapterFolder) -> tuple[int, ...]:
    """A FaceID's reference: one face embedding (its projection's input width, 512 for ArcFace's).

    An InstantID's resampler reads it as one token: ``(1, width)``.
    """
    return (1, folder.face_width) if folder.kind == INSTANTID else (folder.face_width,)


def identity_nets(build: AdapterBuild) -> dict[str, IpAdapterFolder]:
    """The InstantIDs of ``build`` by adapter name: each folder's IdentityNet is a ControlNet engine of that name."""
    return {name: folder for name, folder in zip(build.ip_adapters, build.ip_folders(), strict=True)
            if folder.kind == INSTANTID}  # fmt: skip


def adapter_modules(
    modules: dict, build: AdapterBuild, support: AdapterSupport, lora_engines: tuple[str, ...], between=None
) -> dict:
    """The family's export modules made adapter-ready, plus the image encoder.

    LoRA slots go into ``lora_engines`` (the family's), the IP-Adapter into the UNet and the motion UNets. ``between``:
    what else changes the modules after the IP-Adapter's UNet is made and before LoRA slots wrap them (ControlNet
    residual inputs, which the specs order between the two).
    """
    modules = dict(modules)
    ip = support.ip_adapter
    if ip is not None:
        folders = build.ip_folders()

        def with_ip(source: ExportModule, video: bool) -> ExportModule:
            def load(dtype: torch.dtype) -> torch.nn.Module:
                module = source.load(dtype)
                load_into_unet(module.unet, folders)
                module.unet.to(dtype)
                module.added = (*module.added, IMAGE_EMBEDS)
                ready = IpReadyUnet(module, module.unet.ip_inputs, len(folders), ip.mask_levels, ip, video)
                ready.side_files = getattr(module, "side_files", {})  # a motion UNet's config
                return ready

            return ExportModule(load, source.keep_fp32)

        for name in [name for name in modules if name == "unet" or name.startswith(MOTION_UNET_PREFIX)]:
            modules[name] = with_ip(modules[name], video=name != "unet")  # a motion UNet's: a video's references
        encoder = next((folder.image_encoder for folder in folders if folder.image_encoder), None)
        if encoder is not None:  # plain FaceIDs read faces' embeddings only, found by the face models
            modules[IMAGE_ENCODER] = ExportModule(lambda dtype: load_image_encoder(encoder, dtype, ip.hidden_states))
    if between is not None:
        modules = between(modules)
    if support.lora:
        for name in lora_engines:
            if name in modules:
                modules[name] = with_lora_slots(modules[name])
    return modules
