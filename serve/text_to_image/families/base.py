"""What a model family declares, and the parts families share.

A family declares the diffusers folder it reads, its engines and their specs, the torch modules they are exported
from, and the UNet's conditioning for a prompt. The denoising loop, the exporter, the Triton configs and the clients
only read these declarations. Every family has a ``vae_encoder`` (images in: img2img, inpainting); a folder whose
UNet takes 9 channels (latents, mask, masked image's latents) is an inpainting checkpoint; a folder built with
ControlNets has their engines and a UNet that takes their residuals (:mod:`serve.text_to_image.controlnet`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from serve.adapters.support import AdapterSupport
from serve.errors import UnsupportedModel
from serve.text_to_image.controlnet import ControlNetSupport, Residual, residual_layout
from serve.text_to_image.generation import Generation
from serve.triton.spec import EngineRunner, ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin")
UNET_ENGINE = "unet"
MODEL_INDEX = "model_index.json"


@dataclass(frozen=True)
class PipelineDims:
    """Shape facts of one diffusers model that every family has; families add their own fields."""

    text_length: int
    latent_channels: int
    vae_scale_factor: int
    vae_scaling_factor: float
    sample_size: int
    vae_sample_size: int  # the VAE config's sample size: diffusers' tile size for tiled decoding
    # the latents' (None: a plain UNet's), or with an inpainting UNet theirs + a mask + the masked image's latents
    unet_in_channels: int | None = field(default=None, kw_only=True)
    residuals: tuple[Residual, ...] = field(default=(), kw_only=True)  # a ControlNet's residuals for this UNet
    unet_bytes: int | None = field(default=None, kw_only=True)  # the UNet's weight files (None: not known)

    def __post_init__(self) -> None:
        if self.unet_in_channels is None:
            object.__setattr__(self, "unet_in_channels", self.latent_channels)
        object.__setattr__(self, "residuals", tuple(Residual(*r) for r in self.residuals))  # as read from JSON

    @property
    def native_size(self) -> int:
        """Image side the model was built for, in pixels."""
        return self.sample_size * self.vae_scale_factor

    @property
    def inpainting(self) -> bool:
        """Whether the UNet is an inpainting UNet (it takes a mask and the masked image's latents)."""
        return self.unet_in_channels != self.latent_channels


@dataclass(frozen=True)
class Component:
    """A folder of a diffusers pipeline that a family needs, and the file that must be in it."""

    folder: str
    required_file: str
    has_weights: bool = True


@dataclass(frozen=True)
class ExportModule:
    """How to get the torch module an engine is exported from: ``load(dtype)``, called for one engine at a time.

    ``keep_fp32``: the engine stays in fp32 in an fp16 export (SDXL's VAE, as diffusers' ``force_upcast``).
    """

    load: Callable[[torch.dtype], torch.nn.Module]
    keep_fp32: bool = False


class Family(ABC):
    """One model family (SD 1.x/2.x, SDXL), bound to the dims of one model, its adapters and its ControlNets.

    ``pipeline_class`` is the family's text-to-image pipeline; ``pipeline_classes`` every ``model_index.json`` class
    recognised as the family (its img2img and inpainting pipelines' folders hold the same components).
    """

    name: ClassVar[str]
    pipeline_class: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    components: ClassVar[tuple[Component, ...]]
    dims_type: ClassVar[type[PipelineDims]]
    added_conditioning: ClassVar[tuple[str, ...]] = ()
    """The UNet's conditioning after ``encoder_hidden_states`` (SDXL's ``text_embeds``, ``time_ids``)."""

    def __init__(
        self, dims: PipelineDims, adapters: AdapterSupport | None = None, controlnets: ControlNetSupport | None = None
    ) -> None:
        self.dims = dims
        self.adapters = adapters or AdapterSupport()
        self.controlnets = controlnets or ControlNetSupport()
        plain = self.engine_specs()
        self.specs = self.controlnets.specs(self.adapters.specs(plain), plain[UNET_ENGINE], dims)

    def with_engines(self, adapters: AdapterSupport, controlnets: ControlNetSupport) -> Family:
        """This family and model, its engines taking ``adapters`` and ``controlnets``."""
        return type(self)(self.dims, adapters, controlnets)

    # -- what a diffusers folder of this family holds ---------------------------------------------------------------

    @classmethod
    @abstractmethod
    def read_dims(cls, model_dir: Path) -> PipelineDims:
        """Read the dims from a diffusers folder's configs (no weights)."""

    @classmethod
    def tokenizers(cls) -> tuple[str, ...]:
        """The tokenizer folders, copied beside the engines."""
        return tuple(c.folder for c in cls.components if c.folder.startswith("tokenizer"))

    @classmethod
    def check_folder(cls, model_dir: Path) -> None:
        """Raise :class:`UnsupportedModel` naming the first component ``model_dir`` lacks."""
        index = read_model_index(model_dir)
        for component in cls.components:
            folder = model_dir / component.folder
            listed = index.get(component.folder)
            if not isinstance(listed, list) or None in listed:
                raise UnsupportedModel(f"{model_dir}: {cls.pipeline_class} needs component {component.folder!r}")
            if not (folder / component.required_file).is_file():
                raise UnsupportedModel(
                    f"{model_dir}: component {component.folder!r} has no {component.folder}/{component.required_file}"
                )
            if component.has_weights and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
                raise UnsupportedModel(f"{model_dir}: component {component.folder!r} has no weights (.safetensors)")

    # -- engines ----------------------------------------------------------------------------------------------------

    @abstractmethod
    def engine_specs(self) -> dict[str, ModelSpec]:
        """Every engine's Triton/ONNX spec, in export order."""

    @abstractmethod
    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """For each engine, how to load the torch module it is exported from out of ``model_dir``."""

    def controlnet_export(self, folder: Path) -> ExportModule:
        """A diffusers ``ControlNetModel`` folder as its engine's module, conditioned as the family's UNet is."""
        added = self.added_conditioning
        return ExportModule(lambda dtype: ControlNetModule(diffusers_model("ControlNetModel", folder, dtype), added))

    # -- conditioning -----------------------------------------------------------------------------------------------

    @abstractmethod
    async def condition(
        self, engines: EngineRunner, tokenizers: Mapping, job: Generation, guided: bool
    ) -> tuple[dict[str, np.ndarray], int]:
        """The UNet's per-row inputs besides ``sample`` and ``timestep`` for ``job``'s prompts.

        Rows are ``[negative, prompt]`` when ``guided``, else ``[prompt]`` (the caller repeats them per image).
        Also returns how many prompt tokens truncation dropped.
        """


def read_model_index(model_dir: Path) -> dict:
    """``model_index.json`` of a diffusers folder; :class:`UnsupportedModel` when it is missing or not JSON."""
    path = model_dir / MODEL_INDEX
    if not path.is_file():
        raise UnsupportedModel(f"{model_dir} is not a diffusers pipeline folder: it has no {MODEL_INDEX}")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnsupportedModel(f"{path} is not valid JSON: {error}") from error
    if not isinstance(index, dict):
        raise UnsupportedModel(f"{path} is not a JSON object")
    return index


def read_config(model_dir: Path, component: str, file: str = "config.json") -> dict:
    """A component's JSON config."""
    return json.loads((model_dir / component / file).read_text())


def vae_dims(model_dir: Path) -> dict:
    """The dims every family reads from the UNet and the VAE configs.

    A UNet takes the VAE's latents, or (an inpainting UNet) those, a mask and the masked image's latents.
    """
    unet = read_config(model_dir, "unet")
    vae = read_config(model_dir, "vae")
    sample_size = unet["sample_size"]
    vae_sample_size = vae.get("sample_size", 512)
    latent_channels = int(vae.get("latent_channels", 4))
    unet_in_channels = int(unet["in_channels"])
    if unet_in_channels not in (latent_channels, 2 * latent_channels + 1):
        raise UnsupportedModel(
            f"{model_dir}: the UNet takes {unet_in_channels} channels; the VAE's latents have {latent_channels} "
            f"(an inpainting UNet takes {2 * latent_channels + 1})"
        )
    return {
        "latent_channels": latent_channels,
        "unet_in_channels": unet_in_channels,
        "vae_scale_factor": 2 ** (len(vae["block_out_channels"]) - 1),
        "vae_scaling_factor": float(vae.get("scaling_factor", 0.18215)),
        "sample_size": int(sample_size[0] if isinstance(sample_size, list) else sample_size),
        "vae_sample_size": int(vae_sample_size[0] if isinstance(vae_sample_size, list) else vae_sample_size),
        "residuals": residual_layout(unet),
        "unet_bytes": sum(f.stat().st_size for f in (model_dir / "unet").iterdir() if f.suffix in WEIGHT_SUFFIXES),
    }


def text_length(model_dir: Path) -> int:
    """Token length of the prompts: the tokenizer's ``model_max_length``, else the text encoder's positions."""
    tokenizer = read_config(model_dir, "tokenizer", "tokenizer_config.json")
    text = read_config(model_dir, "text_encoder")
    return int(tokenizer.get("model_max_length", text["max_position_embeddings"]))


def tokenize(tokenizer, text: str, length: int) -> tuple[np.ndarray, int]:
    """Token ids ``[1, length]`` padded/truncated as diffusers does, and how many tokens truncation dropped."""
    ids = tokenizer(text, padding="max_length", max_length=length, truncation=True).input_ids
    full = len(tokenizer(text, truncation=False).input_ids)
    return np.asarray([ids], dtype=np.int64), max(0, full - length)


def diffusers_model(cls_name: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model class ``cls_name`` loaded from ``folder`` in ``dtype``."""
    import diffusers

    return getattr(diffusers, cls_name).from_pretrained(folder, torch_dtype=dtype).eval()


def transformers_model(cls_name: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The transformers model class ``cls_name`` loaded from ``folder`` in ``dtype``."""
    import transformers

    return getattr(transformers, cls_name).from_pretrained(folder, dtype=dtype).eval()


class UnetModule(torch.nn.Module):
    """The UNet with positional inputs: sample, timestep, encoder_hidden_states, then ``added`` conditioning.

    An added ``image_embeds`` (an IP-Adapter's) goes to the UNet as diffusers' pipelines pass it: a list of one.
    ``residuals``, when set for a call (a ControlNet-ready UNet's wrapper sets them), are ControlNets' down-block
    residuals then the mid-block one, added as diffusers' ControlNet pipelines add them.
    """

    def __init__(self, unet: torch.nn.Module, added: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.unet = unet
        self.added = added
        self.residuals: tuple[torch.Tensor, ...] | None = None

    def forward(self, sample, timestep, encoder_hidden_states, *added):
        """The noise prediction."""
        extra = dict(zip(self.added, added, strict=True)) or None
        if extra and "image_embeds" in extra:
            extra["image_embeds"] = [extra["image_embeds"]]
        control = {}
        if self.residuals is not None:
            *down, mid = self.residuals
            control = {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}
        return self.unet(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=extra, return_dict=False, **control
        )[0]


class ControlNetModule(torch.nn.Module):
    """A ``ControlNetModel`` with positional inputs; out, its residuals scaled per row.

    In: sample, timestep, encoder_hidden_states, ``added`` conditioning, the control image (``[0, 1]``), a scale.
    Scaled here rather than by the model's ``conditioning_scale`` (a number), so rows of several requests with
    different scales are one execution; the products are diffusers' (``sample * conditioning_scale``).
    """

    def __init__(self, controlnet: torch.nn.Module, added: tuple[str, ...]) -> None:
        super().__init__()
        self.controlnet = controlnet
        self.added = added

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        """The residuals, down blocks' then the mid block's."""
        *added, image, scale = rest
        extra = dict(zip(self.added, added, strict=True)) or None
        down, mid = self.controlnet(
            sample, timestep, encoder_hidden_states, image, added_cond_kwargs=extra, return_dict=False
        )
        scale = scale.view(-1, 1, 1, 1)
        return (*(residual * scale for residual in down), mid * scale)


class _VaeModule(torch.nn.Module):
    """The VAE with the pipelines' latent scaling (and, where its config has them, ``latents_mean``/``latents_std``)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        self.normalised = mean is not None and std is not None
        if self.normalised:
            self.register_buffer("latents_mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("latents_std", torch.tensor(std).view(1, -1, 1, 1))


class VaeDecoderModule(_VaeModule):
    """Latents in, image out (``[0, 1]`` once clamped): the pipeline's unscaling and denormalising folded in.

    The clamp is left to the pipeline, after tiles are blended, as diffusers blends raw tiles.
    """

    def forward(self, latent):
        """The decoded image in [0, 1]."""
        if self.normalised:
            latent = latent * self.latents_std / self.scaling_factor + self.latents_mean
        else:
            latent = latent / self.scaling_factor
        image = self.vae.decode(latent, return_dict=False)[0]
        return image / 2 + 0.5


class VaeEncoderModule(_VaeModule):
    """Image in (``[-1, 1]``, as diffusers' image processor makes it), the latent distribution out.

    Its mean and standard deviation, scaled (and normalised) as the decoder unscales them. The pipeline samples
    ``mean + std * noise`` with the generation's generator, as ``latent_dist.sample`` does.
    """

    def forward(self, image):
        """The scaled mean and standard deviation of the image's latents."""
        distribution = self.vae.encode(image, return_dict=False)[0]
        if self.normalised:
            scale = self.scaling_factor / self.latents_std
            return (distribution.mean - self.latents_mean) * scale, distribution.std * scale
        return distribution.mean * self.scaling_factor, distribution.std * self.scaling_factor


def vae_decoder_export(model_dir: Path, keep_fp32: bool = False) -> ExportModule:
    """The VAE decoder of ``model_dir`` as an :class:`ExportModule`."""
    return ExportModule(
        lambda dtype: VaeDecoderModule(diffusers_model("AutoencoderKL", model_dir / "vae", dtype)), keep_fp32
    )


def vae_encoder_export(model_dir: Path, keep_fp32: bool = False) -> ExportModule:
    """The VAE encoder of ``model_dir`` as an :class:`ExportModule`."""
    return ExportModule(
        lambda dtype: VaeEncoderModule(diffusers_model("AutoencoderKL", model_dir / "vae", dtype)), keep_fp32
    )
