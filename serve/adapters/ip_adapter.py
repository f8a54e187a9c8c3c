"""IP-Adapters per request: the UNet engine takes each row's references, scales and region masks per adapter.

A stack built with ``--ip-adapter NAME=DIR`` (repeatable; :mod:`build_engines.text_to_image.ip_adapter`) has a UNet
whose attention weighs each adapter's image tokens by an input ``ip_scale[row, adapter, layer]``, and the first
adapter's CLIP image encoder as an engine of its own (``image_encoder``), as diffusers' ``load_ip_adapter`` with lists
loads them. A row without a reference has scale 0 (its output is exactly the base model's), so rows with and without
references, masks and different InstantStyle scales share UNet batches. This module is the serving side: what the
engines take (:class:`IpAdapterInfo`), a request's scales, its references' preprocessing and its region masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_ENCODER = "image_encoder"  # the adapters' engine (the first adapter's encoder, as diffusers loads it)
IMAGE_EMBEDS = "image_embeds"  # the image encoder's output
IP_EMBEDS = "ip_embeds_{}"  # the UNet's input of adapter i: each row's references' embeddings
IP_CLIP = "ip_clip_{}"  # a FaceID Plus i's: each row's references' aligned faces' encoder hidden states
IP_SCALE = "ip_scale"  # [adapter, layer]: each adapter's scale per IP layer
IP_REFERENCES = "ip_references"  # [adapter, reference]: 1 for a reference given, 0 for padding
IP_MASKED = "ip_masked"  # [adapter]: 1 where the adapter's references have region masks
IP_MASK = "ip_mask_{}"  # [adapter, reference, h, w]: the masks downsampled to resolution level l (1/2**l)
MAX_REFERENCES = 4
"""References one adapter takes per request (the UNet's inputs are padded to it)."""
IMAGE, FACEID, FACEID_PLUS, FACEID_PLUSV2 = "image", "faceid", "faceid_plus", "faceid_plusv2"
INSTANTID = "instantid"
KINDS = (IMAGE, FACEID, FACEID_PLUS, FACEID_PLUSV2, INSTANTID)
"""What an adapter reads: an image's CLIP embeddings (IP-Adapter, Plus), a face's ArcFace embedding (FaceID), both
the face's embedding and the aligned face's CLIP hidden states (FaceID Plus; v2 adds its tokens' shortcut), or the
face's embedding as one token of a resampler whose tokens its IdentityNet reads too, beside the face's landmarks
drawn (InstantID)."""
IDENTITY_NET = "ControlNetModel"
"""An InstantID folder's IdentityNet: a ControlNet reading the face's tokens and its drawn landmarks (InstantX's)."""
FACE_CROP = 224
"""The side FaceID Plus's aligned face is cropped at (InsightFace's ``norm_crop(..., image_size=224)``)."""


def face_lora(adapter: str) -> str:
    """The name the LoRA of IP-Adapter FaceID ``adapter`` is listed by (``GET /v1/loras``); identities draw with it."""
    return f"{adapter}.lora"


@dataclass(frozen=True)
class IpAdapterInfo:
    """What the engines built with IP-Adapters take (saved beside them).

    ``names`` and ``weights``: the adapters, in the order of their inputs; ``embeds_shapes``: one reference's
    embeddings per adapter, ``[D]`` (image embeddings) or ``[T, D]`` (the encoder's hidden states: IP-Adapter Plus);
    ``layers``: the attention processors that attend to image tokens, in ``ip_scale``'s column order, and ``levels``
    the resolution level of each (its queries are the latent downsampled ``2**level`` times). ``kinds``: each
    adapter's (:data:`KINDS`): a FaceID's references are ArcFace embeddings of faces (their negative zeros, their LoRA
    :func:`face_lora`), a FaceID Plus also reads the aligned face's encoder states (``ip_clip_i``). The image encoder
    (``image_size``, ``encoder_output`` per image; none: ``()``) is the first adapter's that has one.
    """

    names: tuple[str, ...]
    weights: tuple[str, ...]
    image_size: int  # the image encoder's input side
    embeds_shapes: tuple[tuple[int, ...], ...]
    hidden_states: bool  # the projections read the encoder's penultimate hidden states (IP-Adapter Plus)
    layers: tuple[str, ...]
    levels: tuple[int, ...]
    references: int = MAX_REFERENCES
    kinds: tuple[str, ...] = ()
    encoder_output: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, raw: dict) -> IpAdapterInfo:
        """Read what :func:`dataclasses.asdict` wrote."""
        tuples = {k: tuple(raw.get(k, ())) for k in ("names", "weights", "layers", "levels", "kinds", "encoder_output")}
        return cls(**{**raw, **tuples, "embeds_shapes": tuple(tuple(s) for s in raw["embeds_shapes"])})

    @property
    def encoder_shape(self) -> tuple[int, ...] | None:
        """The image encoder's output per image (None: no image encoder, every adapter a plain FaceID)."""
        return self.encoder_output or None

    def kind(self, index: int) -> str:
        """Adapter ``index``'s kind (:data:`KINDS`)."""
        return self.kinds[index] if index < len(self.kinds) else IMAGE

    def reads_faces(self, index: int) -> bool:
        """Whether adapter ``index`` is an IP-Adapter FaceID (Plus or not): its references are faces."""
        return self.kind(index) != IMAGE

    def reads_landmarks(self, index: int) -> bool:
        """Whether adapter ``index`` is an InstantID: its IdentityNet reads the face's landmarks, drawn."""
        return self.kind(index) == INSTANTID

    def reads_face_states(self, index: int) -> bool:
        """Whether adapter ``index`` is a FaceID Plus: it reads the aligned face's encoder states too."""
        return self.kind(index) in (FACEID_PLUS, FACEID_PLUSV2)

    @property
    def face_states(self) -> tuple[int, ...]:
        """The FaceID Plus adapters, in the order of their ``ip_clip_i`` inputs."""
        return tuple(i for i in range(len(self.names)) if self.reads_face_states(i))

    def face_adapter(self, name: str | None) -> int | None:
        """The input index of FaceID ``name`` (None: the first FaceID); None if there is no such FaceID."""
        found = [i for i, adapter in enumerate(self.names) if self.reads_faces(i) and name in (None, adapter)]
        return found[0] if found else None

    @property
    def mask_levels(self) -> tuple[int, ...]:
        """The resolution levels that have IP layers: one ``ip_mask_{level}`` input each."""
        return tuple(sorted(set(self.levels)))

    def index(self, name: str | None) -> int:
        """The input index of adapter ``name`` (None: the first but FaceIDs); ValueError naming the served ones."""
        if name is None:
            index = next((i for i in range(len(self.names)) if not self.reads_faces(i)), None)
            if index is None:
                raise ValueError("the model's IP-Adapters are FaceIDs: send a face as identity")
            return index
        if name not in self.names:
            raise ValueError(f"unknown IP-Adapter {name!r} (served: {', '.join(self.names)})")
        return self.names.index(name)


def level_sides(height: int, width: int, levels: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """The query grid (h, w) of each resolution level for a latent ``height`` x ``width``.

    Each UNet downsampler (a stride-2 convolution with padding 1) takes a side to ``ceil(side / 2)``.
    """
    return {level: (-(-height // 2**level), -(-width // 2**level)) for level in levels}


def region_masks(masks: np.ndarray, levels: dict[int, tuple[int, int]]) -> dict[int, np.ndarray]:
    """Region masks ``[references, H, W]`` (``IPAdapterMaskProcessor.preprocess``'s) at each level's query grid.

    Downsampled by diffusers' own ``IPAdapterMaskProcessor.downsample``, as its attention processor does per layer.
    """
    import torch
    from diffusers.image_processor import IPAdapterMaskProcessor

    tensor = torch.from_numpy(np.ascontiguousarray(masks, np.float32))
    out = {}
    for level, (h, w) in levels.items():
        rows = [IPAdapterMaskProcessor.downsample(tensor[i : i + 1], 1, h * w, 1) for i in range(len(masks))]
        out[level] = torch.stack(rows).reshape(len(masks), h, w).numpy()
    return out


def preprocessed_masks(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Mask images (RGB uint8, the output's size) as diffusers' ``IPAdapterMaskProcessor`` makes them: ``[N, H, W]``."""
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import Image

    pil = [Image.fromarray(image) for image in images]
    return IPAdapterMaskProcessor().preprocess(pil, height=height, width=width)[:, 0].numpy()


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
