"""Stable Video Diffusion: a still animated (``StableVideoDiffusionPipeline``), no prompt read.

The still conditions everything: its CLIP image embedding (at 224 px, as the pipeline resizes it) is the UNet's
``encoder_hidden_states``, and its VAE latents (the still plus ``noise_aug_strength`` of noise, the latent
distribution's mode) go beside every frame's noisy latents (8 channels in). The UNet (``UNetSpatioTemporalCondition``)
takes a whole video per row, frames first, and ``added_time_ids`` = (fps - 1, motion bucket id, noise augmentation);
guidance grows linearly over the frames from ``min_guidance_scale`` to the request's ``guidance_scale``. The VAE's
temporal decoder decodes ``decode_chunk_size`` frames per call, the frames of one chunk seen together. The loop is
:mod:`serve.text_to_image.image_to_video`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from serve.adapters.ip_adapter import IMAGE_EMBEDS, IMAGE_ENCODER
from serve.errors import InvalidInput
from serve.text_to_image.families.base import Family, PipelineDims
from serve.text_to_image.families.folder import Component, read_config, vae_dims
from serve.text_to_image.generation import Outline
from serve.text_to_image.prompt_chunks import PromptEncoder
from serve.text_to_image.samplers import Sampler
from serve.text_to_image.spec import (
    LATENT_AXES,
    UNET,
    UNET_BATCHING,
    UNET_MAX_BATCH,
    VAE_DECODER,
    VAE_ENCODER,
    VAE_MAX_BATCH,
    VIDEO_AXES,
)
from serve.triton.spec import DynamicBatching, ModelSpec, TensorSpec

if TYPE_CHECKING:
    from serve.text_to_image.families.exports import ExportModule

CLIP_SIDE = 224
"""The side the still is resized to for its CLIP embedding (the pipeline's ``_resize_with_antialiasing``)."""
TIME_IDS = 3  # fps - 1, motion bucket id, noise augmentation strength
FRAME_AXES = ("frames", "height", "width")
SVD_SAMPLERS = {"euler": Sampler("EulerDiscreteScheduler", {})}
"""SVD's scheduler as its folder configures it (EDM's Karras sigmas, v-prediction, continuous timesteps)."""


@dataclass(frozen=True)
class SVDDims(PipelineDims):
    """SVD dims: the image embedding's width and the frames the UNet was trained on (the default)."""

    image_embed_dim: int
    frames: int


class StableVideoDiffusion(Family):
    """``StableVideoDiffusionPipeline`` folders (SVD, SVD-XT): image-to-video through ``POST /v1/videos``."""

    name = "svd"
    pipeline_classes = ("StableVideoDiffusionPipeline",)
    dims_type = SVDDims
    samplers = SVD_SAMPLERS
    lora_engines = ()
    animates_images: ClassVar[bool] = True
    components = (
        Component(IMAGE_ENCODER, "config.json"),
        Component("feature_extractor", "preprocessor_config.json", has_weights=False),
        Component(UNET, "config.json"),
        Component("vae", "config.json"),
        Component("scheduler", "scheduler_config.json", has_weights=False),
    )

    @classmethod
    def read_dims(cls, model_dir: Path) -> SVDDims:
        """Dims from the image encoder, UNet and VAE configs (no prompt: no tokens)."""
        return SVDDims(
            text_length=0,
            image_embed_dim=int(read_config(model_dir, IMAGE_ENCODER)["projection_dim"]),
            frames=int(read_config(model_dir, UNET).get("num_frames", 14)),
            **vae_dims(model_dir, UNET, plain_unet=False),
        )

    @property
    def default_frames(self) -> int:
        """A video's frames when it asks none: the UNet's trained count (14 for SVD, 25 for SVD-XT)."""
        return self.dims.frames

    @property
    def default_size(self) -> str:
        """A video's size when it asks none: the pipeline's 1024x576 for SVD's 768 px UNet, the same shape else."""
        side, multiple = self.dims.native_size, self.side_multiple
        width, height = (side * 4 // 3, side * 3 // 4)
        return f"{width - width % multiple}x{height - height % multiple}"

    def engine_specs(self) -> dict[str, ModelSpec]:
        """image_encoder -> image_embeds; the video UNet; the VAE encoder (the still's latents) and temporal decoder."""
        d = self.dims
        latents = d.latent_channels
        frames = {"axis_names": VIDEO_AXES}
        return {
            IMAGE_ENCODER: ModelSpec(
                name=IMAGE_ENCODER,
                inputs=(TensorSpec("pixel_values", "float32", (3, CLIP_SIDE, CLIP_SIDE)),),
                outputs=(TensorSpec(IMAGE_EMBEDS, "float32", (d.image_embed_dim,)),),
                max_batch_size=VAE_MAX_BATCH,
                dynamic_batching=DynamicBatching(),
            ),
            UNET: ModelSpec(
                name=UNET,
                inputs=(
                    TensorSpec("sample", "float32", (-1, 2 * latents, -1, -1), **frames),
                    TensorSpec("timestep", "float32", ()),
                    TensorSpec("encoder_hidden_states", "float32", (1, d.image_embed_dim)),
                    TensorSpec("added_time_ids", "float32", (TIME_IDS,)),
                ),
                outputs=(TensorSpec("noise_pred", "float32", (-1, latents, -1, -1), **frames),),
                max_batch_size=UNET_MAX_BATCH,
                dynamic_batching=UNET_BATCHING,
            ),
            VAE_ENCODER: ModelSpec(
                name=VAE_ENCODER,
                inputs=(TensorSpec("image", "float32", (3, -1, -1), ("height", "width"), d.vae_scale_factor),),
                outputs=(TensorSpec("latent_mode", "float32", (latents, -1, -1), LATENT_AXES),),
                max_batch_size=VAE_MAX_BATCH,
                dynamic_batching=DynamicBatching(),
            ),
            VAE_DECODER: ModelSpec(
                name=VAE_DECODER,
                inputs=(TensorSpec("latent", "float32", (-1, latents, -1, -1), **frames),),
                outputs=(TensorSpec("image", "float32", (-1, 3, -1, -1), FRAME_AXES),),
                max_batch_size=VAE_MAX_BATCH,
                dynamic_batching=DynamicBatching(),
            ),
        }

    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """The CLIP vision encoder's projected embedding, the video UNet, the VAE's encoder and temporal decoder."""
        from serve.text_to_image.families.svd_exports import svd_exports

        return svd_exports(model_dir, keep_vae_fp32=bool(read_config(model_dir, "vae").get("force_upcast", True)))

    def check(self, asked: Outline, controlnets=()) -> None:
        """A video from one still: its sampler and size as every family's; no mask, ControlNets, adapters or LoRAs."""
        if not asked.video:
            why = f"{self.name} models make videos from a still (POST /v1/videos with an input_reference), not images"
            raise InvalidInput(f"model: {why}", "model")
        if not asked.images:
            raise InvalidInput(f"image: {self.name} models animate a still: send one (input_reference)", "image")
        given = {
            "mask": asked.mask,
            "controlnets": asked.controls,
            "loras": asked.loras,
            "references": asked.referenced,
        }
        if name := next((name for name, present in given.items() if present), None):
            raise InvalidInput(f"{name}: {self.name} models take a still alone (no {name})", name)
        super().check(asked, controlnets)

    def prompt_encoders(self) -> tuple[PromptEncoder, ...]:
        """None: SVD reads no prompt (a request's is its video's caption)."""
        return ()

    async def condition(self, engines, tokenizers: Mapping, job, guided: bool) -> tuple[dict[str, np.ndarray], int]:
        """Not a prompt's: SVD's conditioning is its still's (:mod:`serve.text_to_image.image_to_video`)."""
        raise NotImplementedError("SVD is conditioned by its still: serve.text_to_image.image_to_video")
