"""How adapters meet the engines: what an adapter-ready engine folder declares, and how its engines are exported.

A folder built with ``--loras`` has LoRA slots in its text encoders and UNet (:mod:`serve.adapters.lora`); one built
with ``--ip-adapter DIR`` has a UNet that takes image embeddings and per-layer scales, and an ``image_encoder``
engine (:mod:`serve.adapters.ip_adapter`). ``adapters.json`` beside the engines records which; the model family
reads it (:meth:`AdapterSupport.specs`), so the exporter, the Triton configs, the clients and the loop all see the
same inputs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from serve.adapters.ip_adapter import (
    IMAGE_EMBEDS,
    IMAGE_ENCODER,
    IP_SCALE,
    IpAdapterFolder,
    IpAdapterInfo,
    IpReadyUnet,
    load_image_encoder,
    load_into_unet,
)
from serve.adapters.lora import ADAPTERS_INPUT, LORA_ENGINES, SLOTS_FILE, save_slots
from serve.files import content_hash
from serve.text_to_image.spec import PRIORITIES
from serve.triton.spec import DynamicBatching, ModelSpec, TensorSpec

ADAPTERS_FILE = "adapters.json"
LORA_ENGINE_CLASS = "serve.adapters.backend:LoraOnnxModel"
IMAGE_ENCODER_MAX_BATCH = 8


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


@dataclass(frozen=True)
class AdapterSupport:
    """What the engines of a folder take (``adapters.json``); the family's specs gain the matching inputs."""

    lora: bool = False
    ip_adapter: IpAdapterInfo | None = None

    def save(self, engine_dir: Path) -> None:
        """Write ``adapters.json``."""
        (engine_dir / ADAPTERS_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, engine_dir: Path) -> AdapterSupport:
        """Read ``adapters.json`` (none there: no adapters)."""
        path = engine_dir / ADAPTERS_FILE
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        ip = raw.get("ip_adapter")
        return cls(bool(raw.get("lora")), IpAdapterInfo.from_json(ip) if ip else None)

    @property
    def any(self) -> bool:
        """Whether the engines take any adapter."""
        return self.lora or self.ip_adapter is not None

    def specs(self, specs: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        """``specs`` with the adapter inputs added, and the image encoder's spec when there is an IP-Adapter."""
        specs = dict(specs)
        ip = self.ip_adapter
        if ip is not None:
            unet = specs["unet"]
            extra = (
                TensorSpec(IMAGE_EMBEDS, "float32", ip.embeds_shape),
                TensorSpec(IP_SCALE, "float32", (len(ip.layers),)),
            )
            specs["unet"] = dataclasses.replace(unet, inputs=(*unet.inputs, *extra))
            side = ip.image_size
            specs[IMAGE_ENCODER] = ModelSpec(
                name=IMAGE_ENCODER,
                inputs=(TensorSpec("pixel_values", "float32", (3, side, side)),),
                outputs=(TensorSpec(IMAGE_EMBEDS, "float32", ip.embeds_shape[1:]),),
                max_batch_size=IMAGE_ENCODER_MAX_BATCH,
                dynamic_batching=DynamicBatching(**PRIORITIES),
            )
        if self.lora:
            for name in LORA_ENGINES:
                if name in specs:
                    spec = specs[name]
                    adapters = TensorSpec(ADAPTERS_INPUT, "bytes", ())
                    specs[name] = dataclasses.replace(
                        spec, inputs=(*spec.inputs, adapters), python_model=LORA_ENGINE_CLASS
                    )
        return specs


def ip_info(build: AdapterBuild, model_dir: Path) -> IpAdapterInfo | None:
    """What the IP-Adapter of ``build`` makes ``model_dir``'s engines take (read on a weightless UNet)."""
    from serve.adapters.lora_layers import weightless

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


def adapter_modules(modules: dict, build: AdapterBuild, support: AdapterSupport) -> dict:
    """The family's export modules made adapter-ready (LoRA slots, the IP-Adapter), plus the image encoder."""
    from serve.text_to_image.families.base import ExportModule

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
    if support.lora:
        for name in LORA_ENGINES:
            if name in modules:
                modules[name] = _with_slots(modules[name])
    return modules


def _with_slots(source):
    from serve.adapters.lora_layers import lora_ready
    from serve.text_to_image.families.base import ExportModule

    def load(dtype: torch.dtype) -> torch.nn.Module:
        module = source.load(dtype)
        ready, slots, extras = lora_ready(module, inner_model(module))
        ready.graph_extras = extras
        ready.side_files = {SLOTS_FILE: lambda path: save_slots(slots, path)}
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
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    return not isinstance(module, ModelMixin | PreTrainedModel)
