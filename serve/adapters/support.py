"""What an adapter-ready engine folder's engines take: LoRA slots, an IP-Adapter; the specs gain the matching inputs.

A folder built with ``--loras`` has LoRA slots in its text encoders and UNet (:mod:`serve.adapters.lora`); one built
with ``--ip-adapter DIR`` has a UNet that takes image embeddings and per-layer scales, and an ``image_encoder``
engine (:mod:`serve.adapters.ip_adapter`). The model family reads this (:meth:`AdapterSupport.specs`), so the
exporter, the Triton configs, the clients and the loop all see the same inputs. How the engines are made
adapter-ready is build time: :mod:`build_engines.text_to_image.adapters`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serve.adapters.ip_adapter import (
    IMAGE_EMBEDS,
    IMAGE_ENCODER,
    IP_CLIP,
    IP_EMBEDS,
    IP_MASK,
    IP_MASKED,
    IP_REFERENCES,
    IP_SCALE,
    IpAdapterInfo,
)
from serve.adapters.lora import ADAPTERS_INPUT
from serve.priority import PRIORITIES
from serve.triton.spec import DynamicBatching, ModelSpec, TensorSpec

LORA_ENGINE_CLASS = "serve.adapters.backend:LoraOnnxModel"
IMAGE_ENCODER_MAX_BATCH = 8


@dataclass(frozen=True)
class AdapterSupport:
    """What the engines of a folder take (``adapters.json``); the family's specs gain the matching inputs."""

    lora: bool = False
    ip_adapter: IpAdapterInfo | None = None

    def to_json(self) -> dict:
        """What ``easel build`` saves beside the engines (``adapters.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> AdapterSupport:
        """Read what :meth:`to_json` wrote."""
        ip = raw.get("ip_adapter")
        return cls(bool(raw.get("lora")), IpAdapterInfo.from_json(ip) if ip else None)

    @property
    def any(self) -> bool:
        """Whether the engines take any adapter."""
        return self.lora or self.ip_adapter is not None

    def specs(self, specs: dict[str, ModelSpec], lora_engines: tuple[str, ...]) -> dict[str, ModelSpec]:
        """``specs`` with the adapter inputs added, and the image encoder's spec when there is an IP-Adapter.

        ``lora_engines``: the engines that take LoRA slots (the model family's).
        """
        specs = dict(specs)
        ip = self.ip_adapter
        if ip is not None:
            specs["unet"] = self.ip_ready(specs["unet"])
        if ip is not None and ip.encoder_shape is not None:
            side = ip.image_size
            specs[IMAGE_ENCODER] = ModelSpec(
                name=IMAGE_ENCODER,
                inputs=(TensorSpec("pixel_values", "float32", (3, side, side)),),
                outputs=(TensorSpec(IMAGE_EMBEDS, "float32", ip.encoder_shape),),
                max_batch_size=IMAGE_ENCODER_MAX_BATCH,
                dynamic_batching=DynamicBatching(**PRIORITIES),
            )
        return specs | self.lora_specs({name: specs[name] for name in lora_engines if name in specs})

    def ip_ready(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` (the UNet's, a motion UNet's) taking the IP-Adapters' inputs after its own (none: as it is)."""
        ip = self.ip_adapter
        return spec if ip is None else dataclasses.replace(spec, inputs=(*spec.inputs, *ip_inputs(ip)))

    def lora_specs(self, specs: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        """``specs`` (engines that take LoRA slots) with the per-row adapters input, when the engines are LoRA-ready."""
        if not self.lora:
            return dict(specs)
        adapters = TensorSpec(ADAPTERS_INPUT, "bytes", ())
        return {
            name: dataclasses.replace(spec, inputs=(*spec.inputs, adapters), python_model=LORA_ENGINE_CLASS)
            for name, spec in specs.items()
        }


def ip_inputs(ip: IpAdapterInfo) -> tuple[TensorSpec, ...]:
    """The UNet's IP inputs, in :class:`build_engines.text_to_image.ip_adapter.IpReadyUnet`'s order."""
    adapters, references = len(ip.names), ip.references
    embeds = tuple(
        TensorSpec(IP_EMBEDS.format(i), "float32", (references, *shape)) for i, shape in enumerate(ip.embeds_shapes)
    )
    rows = (
        TensorSpec(IP_SCALE, "float32", (adapters, len(ip.layers))),
        TensorSpec(IP_REFERENCES, "float32", (adapters, references)),
        TensorSpec(IP_MASKED, "float32", (adapters,)),
    )
    masks = tuple(
        TensorSpec(IP_MASK.format(level), "float32", (adapters, references, -1, -1), names, 0.5**level)
        for level in ip.mask_levels
        for names in [(f"ip_mask_{level}_height", f"ip_mask_{level}_width")]
    )
    clips = tuple(TensorSpec(IP_CLIP.format(i), "float32", (references, *ip.encoder_output)) for i in ip.face_states)
    return (*embeds, *rows, *masks, *clips)
