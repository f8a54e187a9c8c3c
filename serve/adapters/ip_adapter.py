"""IP-Adapter per request: the UNet engine takes each row's image embeddings and per-layer scales.

A stack built with ``--ip-adapter DIR`` (:mod:`build_engines.text_to_image.ip_adapter`) has a UNet whose attention
weighs the image tokens by an input ``ip_scale[row, layer]``, and the adapter's CLIP image encoder as an engine of
its own (``image_encoder``). A row without a reference image has scale 0 (its output is exactly the base model's), so
rows with and without references, and with different InstantStyle scales, share UNet batches. This module is the
serving side: what the engines take (:class:`IpAdapterInfo`), a request's scales and its reference's preprocessing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_ENCODER = "image_encoder"  # the adapter's engine, and its folder in an IP-Adapter folder
IMAGE_EMBEDS = "image_embeds"
IP_SCALE = "ip_scale"


@dataclass(frozen=True)
class IpAdapterInfo:
    """What the engines built with an IP-Adapter take (saved beside them)."""

    weights: str  # the file the UNet was built with, for the record
    image_size: int  # the image encoder's input side
    embeds_shape: tuple[int, ...]  # one row of image_embeds: [D] (image embeddings) or [T, D] (hidden states)
    hidden_states: bool  # the projection reads the encoder's penultimate hidden states (IP-Adapter Plus)
    layers: tuple[str, ...]  # attention processors that attend to image tokens, in ip_scale's column order

    @classmethod
    def from_json(cls, raw: dict) -> IpAdapterInfo:
        """Read what :func:`dataclasses.asdict` wrote."""
        return cls(**{**raw, "embeds_shape": tuple(raw["embeds_shape"]), "layers": tuple(raw["layers"])})


class IpScales:
    """``ip_adapter_scale`` (a number or InstantStyle's mapping) -> one scale per IP layer, as diffusers sets them.

    ``set_ip_adapter_scale`` expands a mapping with ``_maybe_expand_lora_scales`` over the UNet's blocks, then gives
    each IP processor the value of the key its name starts with; this does the same on a weightless UNet built from
    the UNet's config. Raises ``ValueError`` (diffusers' message) for a mapping that does not fit the UNet.
    """

    def __init__(self, unet_config: dict, layers: tuple[str, ...]) -> None:
        from accelerate import init_empty_weights
        from diffusers import UNet2DConditionModel

        with init_empty_weights():
            self.unet = UNet2DConditionModel.from_config(unet_config)
        self.layers = layers

    def __call__(self, scale: float | dict) -> np.ndarray:
        """The ``ip_scale`` row for ``scale``."""
        from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

        for part in ("down", "up") if isinstance(scale, dict) else ():
            blocks = getattr(self.unet, f"{part}_blocks")
            known = [f"block_{i}" for i, block in enumerate(blocks) if hasattr(block, "attentions")]
            for name in scale.get(part, {}) if isinstance(scale.get(part), dict) else ():
                if name not in known:  # diffusers would ignore it silently
                    raise ValueError(f"{part}.{name}: this UNet's {part} blocks with attention are {', '.join(known)}")
        (config,) = _maybe_expand_lora_scales(self.unet, [scale], default_scale=0.0)
        values = np.zeros(len(self.layers), dtype=np.float32)
        for i, name in enumerate(self.layers):
            if isinstance(config, dict):
                for key, value in config.items():
                    if name.startswith(key):
                        values[i] = value
            else:
                values[i] = config
        return values


def image_processor(feature_extractor: Path, image_size: int):
    """The CLIP image processor the pipeline would use: the model's ``feature_extractor``, else diffusers' default."""
    from transformers import CLIPImageProcessor

    if (feature_extractor / "preprocessor_config.json").is_file():
        return CLIPImageProcessor.from_pretrained(feature_extractor)
    return CLIPImageProcessor(size=image_size, crop_size=image_size)
