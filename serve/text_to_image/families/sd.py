"""Stable Diffusion 1.x/2.x: one CLIP text encoder whose last hidden state conditions the UNet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve.text_to_image.families.base import (
    Component,
    ExportModule,
    Family,
    PipelineDims,
    UnetModule,
    diffusers_model,
    read_config,
    text_length,
    tokenize,
    transformers_model,
    vae_decoder_export,
    vae_dims,
    vae_encoder_export,
)
from serve.text_to_image.spec import (
    TEXT_ENCODER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    denoiser_spec,
    text_encoder_spec,
    unet_instances,
    vae_decoder_spec,
    vae_encoder_spec,
)
from serve.triton.spec import ModelSpec, TensorSpec


@dataclass(frozen=True)
class SDDims(PipelineDims):
    """SD dims: the text encoder's width is the UNet's cross-attention width."""

    text_hidden: int


class ClipLastHidden(torch.nn.Module):
    """CLIP text encoder -> its last hidden state (what StableDiffusionPipeline conditions on)."""

    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        """The last hidden state."""
        return self.text_encoder(input_ids, return_dict=False)[0]


class StableDiffusion(Family):
    """``StableDiffusionPipeline`` folders (and the img2img and inpainting pipelines' folders)."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
    dims_type = SDDims
    components = (
        Component("text_encoder", "config.json"),
        Component("tokenizer", "tokenizer_config.json", has_weights=False),
        Component("unet", "config.json"),
        Component("vae", "config.json"),
        Component("scheduler", "scheduler_config.json", has_weights=False),
    )

    @classmethod
    def read_dims(cls, model_dir: Path) -> SDDims:
        """Dims from the tokenizer, text encoder, UNet and VAE configs."""
        return SDDims(
            text_length=text_length(model_dir),
            text_hidden=int(read_config(model_dir, "text_encoder")["hidden_size"]),
            **vae_dims(model_dir),
        )

    def engine_specs(self) -> dict[str, ModelSpec]:
        """text_encoder -> last_hidden_state; unet on encoder_hidden_states; vae_decoder, vae_encoder."""
        d = self.dims
        hidden = (d.text_length, d.text_hidden)
        return {
            TEXT_ENCODER: text_encoder_spec(
                TEXT_ENCODER, d.text_length, (TensorSpec("last_hidden_state", "float32", hidden),)
            ),
            UNET: denoiser_spec(
                d.latent_channels,
                (TensorSpec("encoder_hidden_states", "float32", hidden),),
                unet_instances(d.unet_bytes),
                in_channels=d.unet_in_channels,
            ),
            VAE_DECODER: vae_decoder_spec(d.latent_channels),
            VAE_ENCODER: vae_encoder_spec(d.latent_channels, d.vae_scale_factor),
        }

    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """CLIPTextModel's last hidden state, the UNet, the VAE decoder and encoder."""
        return {
            TEXT_ENCODER: ExportModule(
                lambda dtype: ClipLastHidden(transformers_model("CLIPTextModel", model_dir / "text_encoder", dtype))
            ),
            UNET: ExportModule(
                lambda dtype: UnetModule(diffusers_model("UNet2DConditionModel", model_dir / "unet", dtype))
            ),
            VAE_DECODER: vae_decoder_export(model_dir),
            VAE_ENCODER: vae_encoder_export(model_dir),
        } | self.distilled_export(model_dir)

    async def condition(self, engines, tokenizers: Mapping, job, guided: bool) -> tuple[dict[str, np.ndarray], int]:
        """``encoder_hidden_states``: the text encoder's last hidden state of the negative prompt and the prompt."""
        tokenizer, length = tokenizers["tokenizer"], self.dims.text_length
        ids, dropped = tokenize(tokenizer, job.prompt, length)
        if guided:
            ids = np.concatenate([tokenize(tokenizer, job.negative_prompt, length)[0], ids])
        hidden = (await engines.infer(self.specs[TEXT_ENCODER], {"input_ids": ids}))["last_hidden_state"]
        return {"encoder_hidden_states": hidden}, dropped
