"""Stable Diffusion 1.x/2.x: one CLIP text encoder whose last hidden state conditions the UNet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serve.text_to_image.families.base import (
    Family,
    PipelineDims,
    prompt_rows,
)
from serve.text_to_image.families.folder import pipeline_components, read_config
from serve.text_to_image.prompt_chunks import PromptEncoder
from serve.text_to_image.spec import TEXT_ENCODER, UNET, text_encoder_spec, text_states
from serve.triton.spec import ModelSpec, TensorSpec

if TYPE_CHECKING:
    from serve.text_to_image.families.exports import ExportModule


@dataclass(frozen=True)
class SDDims(PipelineDims):
    """SD dims: the text encoder's width is the UNet's cross-attention width."""

    text_hidden: int


class StableDiffusion(Family):
    """``StableDiffusionPipeline`` folders (and the img2img and inpainting pipelines' folders).

    Its VAE is exported in the requested precision whatever ``force_upcast`` says: StableDiffusionPipeline ignores it.
    """

    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
    dims_type = SDDims
    upcasts_vae = False
    components = pipeline_components(UNET, encoders=1)

    @classmethod
    def read_dims(cls, model_dir: Path) -> SDDims:
        """Dims from the tokenizer, text encoder, UNet and VAE configs."""
        return SDDims(
            text_hidden=int(read_config(model_dir, "text_encoder")["hidden_size"]), **cls.shared_dims(model_dir)
        )

    def engine_specs(self) -> dict[str, ModelSpec]:
        """text_encoder -> last_hidden_state; unet on encoder_hidden_states; vae_decoder, vae_encoder."""
        d = self.dims
        hidden = (d.text_length, d.text_hidden)
        return {
            TEXT_ENCODER: text_encoder_spec(
                TEXT_ENCODER, d.text_length, (TensorSpec("last_hidden_state", "float32", hidden),)
            ),
            UNET: self.denoiser_with((text_states("encoder_hidden_states", d.text_length, d.text_hidden),)),
            **self.vae_specs(),
        }

    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """CLIPTextModel's last hidden state, the UNet, the VAE decoder and encoder."""
        from serve.text_to_image.families.exports import text_encoder_export

        return {
            TEXT_ENCODER: text_encoder_export(model_dir, TEXT_ENCODER, "CLIPTextModel"),
            UNET: self.unet_export(model_dir),
            **self.vae_exports(model_dir),
        } | self.derived_exports(model_dir)

    def prompt_encoders(self) -> tuple[PromptEncoder, ...]:
        """The CLIP text encoder, in chunks."""
        return (PromptEncoder(TEXT_ENCODER, "tokenizer", self.dims.text_length),)

    async def condition(self, engines, tokenizers: Mapping, job, guided: bool) -> tuple[dict[str, np.ndarray], int]:
        """``encoder_hidden_states``: the text encoder's last hidden states of the negative prompt and the prompt.

        Weighted and in chunks (:mod:`serve.text_to_image.prompt_chunks`).
        """
        prompts = self.prompts(tokenizers, prompt_rows(job, guided))[TEXT_ENCODER]
        hidden = (await prompts.encoded(engines, self.specs[TEXT_ENCODER]))["last_hidden_state"]
        return {"encoder_hidden_states": hidden}, prompts.dropped
