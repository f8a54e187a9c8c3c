"""What a model family declares, and the parts families share.

A family declares the diffusers folder it reads, its engines and their specs, the torch modules they are exported
from, the denoiser's conditioning for a prompt, and how its denoising runs: which engine each step calls, its
samplers and their timesteps, and whether guidance is classifier-free. The denoising loop, the exporter, the Triton
configs and the clients only read these declarations. A family whose requests may bring images (``takes_images``:
the UNet families) has a ``vae_encoder`` (img2img, inpainting); a folder whose UNet takes 9 channels (latents, mask,
masked image's latents) is an inpainting checkpoint; a folder built with ControlNets has their engines and a UNet that
takes their residuals (:mod:`serve.text_to_image.controlnet`). A UNet model may ship an LCM-distilled copy of its
UNet (``unet_lcm/``, same architecture and inputs, its guidance distilled in): it is one more engine, and the steps of
a few-step job (``lcm``, ``tcd``) that brings no adapters or ControlNets call it, one row per image
(:meth:`Family.step_engine`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from serve.adapters.lora import MOTION_UNET_PREFIX
from serve.adapters.support import AdapterSupport
from serve.errors import InvalidInput, UnsupportedModel
from serve.text_to_image import step_cache
from serve.text_to_image.controlnet import ControlNetSupport, Residual
from serve.text_to_image.families.folder import Component, read_config, read_model_index, text_length, vae_dims
from serve.text_to_image.generation import Generation, Outline
from serve.text_to_image.prompt_chunks import PromptChunks, PromptEncoder
from serve.text_to_image.samplers import FEW_STEP_SAMPLERS, UNET_SAMPLERS, Sampler
from serve.text_to_image.spec import (
    DISTILLED_UNET,
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    UNET,
    UNET_DEEP,
    UNET_SHALLOW,
    VAE_DECODER,
    VAE_ENCODER,
    denoiser_spec,
    motion_unet_spec,
    text_encoder_spec,
    unet_instances,
    vae_decoder_spec,
    vae_encoder_spec,
)
from serve.text_to_image.step_cache import step_cache_specs
from serve.triton.spec import EngineRunner, ModelSpec, TensorSpec

if TYPE_CHECKING:  # the export's torch modules load where engines are exported, never where requests are served
    from serve.text_to_image.families.exports import ExportModule

UNET_CLASS = "UNet2DConditionModel"
UNET_ENGINE = "unet"


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
    unet_bytes: int | None = field(default=None, kw_only=True)  # the denoiser's weight files (None: not known)
    distilled_unet: bool = field(default=False, kw_only=True)  # the folder ships an LCM-distilled UNet (unet_lcm/)

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


class Family(ABC):
    """One model family (SD 1.x/2.x, SDXL, ...), bound to the dims of one model, its adapters and its ControlNets.

    ``pipeline_classes``: every ``model_index.json`` class recognised as the family (its img2img and inpainting
    pipelines' folders hold the same components), the first its text-to-image pipeline (``pipeline_class``).
    ``denoiser`` is the engine each step calls (its output ``noise_pred`` is what the scheduler steps with, whatever
    the model predicts); ``samplers`` the API's samplers as this family runs them (:mod:`serve.text_to_image.samplers`).
    """

    name: ClassVar[str]
    pipeline_class: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    components: ClassVar[tuple[Component, ...]]
    dims_type: ClassVar[type[PipelineDims]]
    denoiser: ClassVar[str] = UNET
    samplers: ClassVar[Mapping[str, Sampler]] = UNET_SAMPLERS
    latent_multiple: ClassVar[int] = 1  # a latent side is a multiple of this: the denoiser's patch
    lora_engines: ClassVar[tuple[str, ...]] = (TEXT_ENCODER, TEXT_ENCODER_2, UNET)
    """The engines diffusers' ``load_lora_weights`` loads a LoRA into (those the family has): they take LoRA slots."""
    takes_images: ClassVar[bool] = True
    """Whether requests may bring images: input images and masks (img2img, inpainting) and ControlNets."""
    added_conditioning: ClassVar[tuple[str, ...]] = ()
    """The UNet's conditioning after ``encoder_hidden_states`` (SDXL's ``text_embeds``, ``time_ids``)."""
    animates_images: ClassVar[bool] = False
    """Whether its models make a video from a still (SVD: :mod:`serve.text_to_image.image_to_video`), not a prompt."""
    upcasts_vae: ClassVar[bool] = True
    """Whether the VAE stays in fp32 in an fp16 export when its config says ``force_upcast``, as the pipeline does."""

    def __init_subclass__(cls, **kwargs) -> None:
        """A family's ``pipeline_class``: the first of the ``pipeline_classes`` it declares."""
        super().__init_subclass__(**kwargs)
        if "pipeline_classes" in vars(cls):
            cls.pipeline_class = cls.pipeline_classes[0]

    def __init__(
        self,
        dims: PipelineDims,
        adapters: AdapterSupport | None = None,
        controlnets: ControlNetSupport | None = None,
        step_cache: bool = False,
        motion_adapters: Mapping[str, str] | None = None,
    ) -> None:
        """``step_cache``: the engines include step caching's pair (:mod:`serve.text_to_image.step_cache`).

        ``motion_adapters``: NAME -> diffusers ``MotionAdapter`` folder, an engine each (``unet_motion_<NAME>``).
        """
        self.dims = dims
        self.adapters = adapters or AdapterSupport()
        self.controlnets = controlnets or ControlNetSupport()
        self.step_cache = step_cache
        self.motion_adapters = dict(motion_adapters or {})
        plain = self.engine_specs()
        if self.motion_adapters and UNET not in plain:
            raise UnsupportedModel(f"motion adapters serve UNet models, not {self.name} models")
        motion = {name: motion_unet_spec(name, self.adapters.ip_ready(plain[UNET])) for name in self.motion_engines}
        if step_cache and UNET not in plain:
            raise UnsupportedModel(f"step caching serves UNet models, not {self.name} models")
        if dims.distilled_unet:  # the plain UNet's inputs: it takes no adapters or ControlNets
            plain[DISTILLED_UNET] = dataclasses.replace(plain[UNET], name=DISTILLED_UNET)
        if step_cache:  # the final up block works at the first block's width: the input convolution's residual's
            plain |= step_cache_specs(plain[UNET], dims.residuals[0].channels)
        specs = self.controlnets.specs(self.adapters.specs(plain, self.lora_engines), plain.get(UNET_ENGINE), dims)
        self.specs = specs | self.adapters.lora_specs(motion)

    @property
    def motion_engines(self) -> tuple[str, ...]:
        """Each motion adapter's UNet engine (``unet_motion_<NAME>``)."""
        return tuple(f"{MOTION_UNET_PREFIX}{name}" for name in self.motion_adapters)

    @property
    def lora_ready_engines(self) -> tuple[str, ...]:
        """The engines that take LoRA slots when built LoRA-ready: :attr:`lora_engines`, and the motion UNets."""
        return (*self.lora_engines, *self.motion_engines)

    def with_engines(
        self,
        adapters: AdapterSupport,
        controlnets: ControlNetSupport,
        step_cache: bool,
        motion_adapters: Mapping[str, str] | None = None,
    ) -> Family:
        """This family and model, its engines taking ``adapters`` and ``controlnets`` (step caching's pair, motion)."""
        return type(self)(self.dims, adapters, controlnets, step_cache, motion_adapters)

    # -- what a diffusers folder of this family holds ---------------------------------------------------------------

    @classmethod
    @abstractmethod
    def read_dims(cls, model_dir: Path) -> PipelineDims:
        """Read the dims from a diffusers folder's configs (no weights)."""

    @classmethod
    def shared_dims(cls, model_dir: Path) -> dict:
        """The dims every family reads: the prompts' token length (:func:`text_length`), then :func:`vae_dims`."""
        return {"text_length": text_length(model_dir), **vae_dims(model_dir, cls.denoiser)}

    def tokenizers(self) -> tuple[str, ...]:
        """The tokenizer folders of this model's engines, copied beside them."""
        return tuple(c.folder for c in self.components if c.folder.startswith("tokenizer") and self.uses(c))

    def uses(self, component: Component) -> bool:
        """Whether this model has ``component`` (an optional one may be left out)."""
        return True

    @classmethod
    def check_folder(cls, model_dir: Path) -> None:
        """Raise :class:`UnsupportedModel` naming the first component ``model_dir`` lacks."""
        index = read_model_index(model_dir)
        for component in cls.components:
            folder = model_dir / component.folder
            listed = index.get(component.folder)
            if component.optional and listed == [None, None]:
                continue
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

    def denoiser_with(self, conditioning: tuple[TensorSpec, ...]) -> ModelSpec:
        """The denoiser's spec: the latents (an inpainting UNet's channels), a timestep, then ``conditioning``."""
        d = self.dims
        return denoiser_spec(
            d.latent_channels, conditioning, unet_instances(d.unet_bytes), self.denoiser, d.unet_in_channels
        )

    def vae_specs(self) -> dict[str, ModelSpec]:
        """The VAE decoder's spec, and the encoder's when requests may bring images; the last engines of a family."""
        specs = {VAE_DECODER: vae_decoder_spec(self.dims.latent_channels)}
        if self.takes_images:
            specs[VAE_ENCODER] = vae_encoder_spec(self.dims.latent_channels, self.dims.vae_scale_factor)
        return specs

    @abstractmethod
    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """For each engine, how to load the torch module it is exported from out of ``model_dir``."""

    def unet_export(self, model_dir: Path, folder: str = UNET) -> ExportModule:
        """The UNet of ``model_dir`` (in ``folder``) taking the family's added conditioning."""
        from serve.text_to_image.families.exports import ExportModule, UnetModule, diffusers_model

        added = self.added_conditioning
        return ExportModule(lambda dtype: UnetModule(diffusers_model(UNET_CLASS, model_dir / folder, dtype), added))

    def derived_exports(self, model_dir: Path) -> dict[str, ExportModule]:
        """The engines made from a UNet: the distilled UNet where the folder ships one, step caching's pair if asked.

        Each conditioned as the family's UNet is.
        """
        from serve.text_to_image.families.exports import (
            DeepUnetModule,
            ExportModule,
            ShallowUnetModule,
            motion_unet_export,
        )

        modules = {DISTILLED_UNET: self.unet_export(model_dir, DISTILLED_UNET)} if self.dims.distilled_unet else {}
        for engine, folder in zip(self.motion_engines, self.motion_adapters.values(), strict=True):
            modules[engine] = motion_unet_export(model_dir / UNET, Path(folder))
        if self.step_cache:
            plain = self.unet_export(model_dir)
            added = self.added_conditioning
            modules[UNET_DEEP] = ExportModule(lambda dtype: DeepUnetModule(plain.load(dtype)))
            modules[UNET_SHALLOW] = ExportModule(lambda dtype: ShallowUnetModule(plain.load(dtype).unet, added))
        return modules

    def vae_exports(self, model_dir: Path) -> dict[str, ExportModule]:
        """The VAE decoder (and encoder, as :meth:`vae_specs`), in fp32 when :attr:`upcasts_vae` and the config asks."""
        from serve.text_to_image.families.exports import VaeDecoderModule, VaeEncoderModule, vae_export

        keep_fp32 = self.upcasts_vae and bool(read_config(model_dir, "vae").get("force_upcast", True))
        modules = {VAE_DECODER: vae_export(VaeDecoderModule, model_dir, keep_fp32)}
        if self.takes_images:
            modules[VAE_ENCODER] = vae_export(VaeEncoderModule, model_dir, keep_fp32)
        return modules

    def controlnet_export(self, folder: Path) -> ExportModule:
        """A diffusers ``ControlNetModel`` folder as its engine's module, conditioned as the family's UNet is."""
        from serve.text_to_image.families.exports import ControlNetModule, ExportModule, diffusers_model

        added = self.added_conditioning
        return ExportModule(lambda dtype: ControlNetModule(diffusers_model("ControlNetModel", folder, dtype), added))

    # -- denoising ---------------------------------------------------------------------------------------------------

    @property
    def side_multiple(self) -> int:
        """What an image side must be a multiple of: one patch of latent positions."""
        return self.dims.vae_scale_factor * self.latent_multiple

    @classmethod
    def check_images(cls, image: bool, mask: bool, controlnets: bool) -> None:
        """Raise :class:`InvalidInput` naming the first of these fields a request gives a family without images."""
        given = {"image": image, "mask": mask, "controlnets": controlnets}
        if not cls.takes_images and (name := next((name for name, present in given.items() if present), None)):
            raise InvalidInput(f"{name}: {cls.name} models take no input images or ControlNets (text only)", name)

    def check(self, asked: Outline, controlnets: Sequence = ()) -> None:
        """Raise :class:`InvalidInput` (naming the field) for a generation this model's engines cannot run.

        Its images at all, its sampler, its size (:attr:`side_multiple`), its ``controlnets`` (the request's, by
        name), its step caching. The Gateway checks a request by these rules before its model loads; the replica
        checks its job by them again.
        """
        self.check_images(asked.images, asked.mask, asked.controls)
        if asked.scheduler not in self.samplers:
            raise InvalidInput(
                f"scheduler: {asked.scheduler!r} is not a sampler of {self.name} models (they take "
                f"{', '.join(self.samplers)})",
                field="scheduler",
            )
        if asked.width % self.side_multiple or asked.height % self.side_multiple:
            raise InvalidInput(
                f"size: {asked.width}x{asked.height}: the sides of {self.name} images are multiples of "
                f"{self.side_multiple}",
                field="size",
            )
        self.controlnets.check(controlnets)
        if asked.motion_adapter:
            self._check_motion(asked)
        step_cache.check(asked, self.specs, self.step_engine(asked))

    def _check_motion(self, asked: Outline) -> None:
        """Raise :class:`InvalidInput` naming ``motion_adapter`` for a video this model's engines cannot run."""
        why = None
        if self.name != "sd":
            why = f"motion adapters serve SD 1.x models; this is a {self.pipeline_class} model"
        elif asked.controls:
            why = "a video takes no ControlNets yet"
        elif self.step_engine(asked) not in self.specs:
            served = ", ".join(self.motion_adapters) or "none: easel up --motion-adapter NAME=DIR"
            why = f"{asked.motion_adapter!r} is not a motion adapter of this model (it serves: {served})"
        if why:
            raise InvalidInput(f"motion_adapter: {why}", "motion_adapter")

    def step_engine(self, asked: Outline) -> str:
        """The engine a generation's steps call: the distilled UNet for a few-step one without adapters or ControlNets.

        Elsewhere the denoiser as loaded: a few-step job with an LCM-LoRA runs the UNet with it, as diffusers does.
        """
        if asked.motion_adapter:
            return f"{MOTION_UNET_PREFIX}{asked.motion_adapter}"
        if DISTILLED_UNET in self.specs and asked.scheduler in FEW_STEP_SAMPLERS and not asked.adapted:
            return DISTILLED_UNET
        return self.denoiser

    def classifier_free(self, job: Generation) -> bool:
        """Whether ``job`` runs classifier-free guidance: two rows per image (negative, prompt) mixed each step.

        Not on a distilled UNet: its guidance is distilled in.
        """
        return job.sampling.guidance_scale > 1.0 and self.step_engine(job.outline) != DISTILLED_UNET

    def set_timesteps(self, scheduler, job: Generation) -> None:
        """Set ``scheduler``'s timesteps for ``job`` as the family's diffusers pipeline does."""
        scheduler.set_timesteps(job.sampling.steps)

    # -- conditioning -----------------------------------------------------------------------------------------------

    @abstractmethod
    def prompt_encoders(self) -> tuple[PromptEncoder, ...]:
        """The text encoders that read a prompt, in the order :meth:`condition` uses them."""

    def prompts(self, tokenizers: Mapping, texts: list[str]) -> dict[str, PromptChunks]:
        """``texts`` chunked for each of :meth:`prompt_encoders`, by engine (what the encoders read, and what not)."""
        return {
            e.engine: PromptChunks(tokenizers[e.tokenizer], texts, e.length, e.max_chunks)
            for e in self.prompt_encoders()
        }

    @abstractmethod
    async def condition(
        self, engines: EngineRunner, tokenizers: Mapping, job: Generation, guided: bool
    ) -> tuple[dict[str, np.ndarray], int]:
        """The denoiser's per-row inputs besides ``sample`` and ``timestep`` for ``job``'s prompts.

        Rows are ``[negative, prompt]`` when ``guided`` (:meth:`classifier_free`), else ``[prompt]`` (the caller
        repeats them per image). Also returns how many prompt tokens truncation dropped.
        """


def prompt_rows(job: Generation, guided: bool) -> list[str]:
    """The texts a job's conditioning encodes: ``[negative, prompt]`` when ``guided``, else ``[prompt]``."""
    return [job.sampling.negative_prompt, job.sampling.prompt] if guided else [job.sampling.prompt]


def hidden_states_spec(engine: str, length: int, width: int, pooled: int | None = None) -> ModelSpec:
    """A text encoder's spec, ``hidden_states`` out (T5, CLIP's penultimate layer), and with ``pooled`` text_embeds."""
    outputs = (TensorSpec("hidden_states", "float32", (length, width)),)
    if pooled is not None:
        outputs += (TensorSpec("text_embeds", "float32", (pooled,)),)
    return text_encoder_spec(engine, length, outputs)
