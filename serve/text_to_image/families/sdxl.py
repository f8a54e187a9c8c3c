"""SDXL: two CLIP text encoders (the second with a projection), as ``StableDiffusionXLPipeline`` conditions its UNet.

The UNet sees the two encoders' penultimate hidden states side by side, the second encoder's pooled, projected
embedding (``text_embeds``) and ``time_ids`` = original size + crop top-left (0, 0) + target size, with the original
and target size both the requested (height, width). An empty negative prompt is all zeros when the pipeline config
says ``force_zeros_for_empty_prompt`` (diffusers' default for SDXL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serve.errors import UnsupportedModel
from serve.text_to_image.families.base import (
    Family,
    PipelineDims,
    hidden_states_spec,
    prompt_rows,
)
from serve.text_to_image.families.folder import pipeline_components, read_config, read_model_index
from serve.text_to_image.prompt_chunks import PromptEncoder, truncated
from serve.text_to_image.spec import TEXT_ENCODER, TEXT_ENCODER_2, UNET, text_states
from serve.triton.spec import ModelSpec, TensorSpec

if TYPE_CHECKING:
    from serve.text_to_image.families.exports import ExportModule

# original (height, width) + crop top-left (y, x) + target (height, width)
TIME_IDS = 6


@dataclass(frozen=True)
class SDXLDims(PipelineDims):
    """SDXL dims: both encoders' widths, the pooled embedding's width, and the empty-negative-prompt rule."""

    text_hidden: int
    text_hidden_2: int
    pooled_dim: int
    force_zeros_for_empty_prompt: bool


class StableDiffusionXL(Family):
    """``StableDiffusionXLPipeline`` folders, and the img2img and inpainting pipelines' folders with both encoders.

    The refiner (one encoder, aesthetic scores) is not this family.
    """

    name = "sdxl"
    pipeline_classes = (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    )
    dims_type = SDXLDims
    added_conditioning = ("text_embeds", "time_ids")
    components = pipeline_components(UNET, encoders=2)

    @classmethod
    def read_dims(cls, model_dir: Path) -> SDXLDims:
        """Dims from the configs; a UNet whose added embedding does not fit these encoders is refused."""
        text_2 = read_config(model_dir, "text_encoder_2")
        unet = read_config(model_dir, "unet")
        dims = SDXLDims(
            text_hidden=int(read_config(model_dir, "text_encoder")["hidden_size"]),
            text_hidden_2=int(text_2["hidden_size"]),
            pooled_dim=int(text_2["projection_dim"]),
            force_zeros_for_empty_prompt=bool(read_model_index(model_dir).get("force_zeros_for_empty_prompt", True)),
            **cls.shared_dims(model_dir),
        )
        added = unet.get("addition_time_embed_dim", 0) * TIME_IDS + dims.pooled_dim
        if unet.get("addition_embed_type") != "text_time" or unet.get("projection_class_embeddings_input_dim") != added:
            raise UnsupportedModel(
                f"{model_dir}: the UNet's added embedding does not take text_embeds ({dims.pooled_dim}) and "
                f"{TIME_IDS} time ids (addition_embed_type, addition_time_embed_dim, "
                "projection_class_embeddings_input_dim)"
            )
        length_2 = read_config(model_dir, "tokenizer_2", "tokenizer_config.json").get("model_max_length")
        if length_2 not in (None, dims.text_length):
            raise UnsupportedModel(f"{model_dir}: tokenizer_2 length {length_2} differs from tokenizer's")
        return dims

    def engine_specs(self) -> dict[str, ModelSpec]:
        """Two text encoders, the UNet with its three conditioning inputs, the VAE decoder and encoder."""
        d = self.dims
        return {
            TEXT_ENCODER: hidden_states_spec(TEXT_ENCODER, d.text_length, d.text_hidden),
            TEXT_ENCODER_2: hidden_states_spec(TEXT_ENCODER_2, d.text_length, d.text_hidden_2, d.pooled_dim),
            UNET: self.denoiser_with(
                (
                    text_states("encoder_hidden_states", d.text_length, d.text_hidden + d.text_hidden_2),
                    TensorSpec("text_embeds", "float32", (d.pooled_dim,)),
                    TensorSpec("time_ids", "float32", (TIME_IDS,)),
                )
            ),
            **self.vae_specs(),
        }

    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """Both encoders' penultimate layers (the second's pooled projection too), the UNet, the VAE decoder, encoder.

        The VAE stays in fp32 in an fp16 export when its config says ``force_upcast``, as the diffusers pipeline does.
        """
        from serve.text_to_image.families.exports import clip_penultimate_export

        return {
            TEXT_ENCODER: clip_penultimate_export(model_dir, TEXT_ENCODER, projection=False),
            TEXT_ENCODER_2: clip_penultimate_export(model_dir, TEXT_ENCODER_2, projection=True),
            UNET: self.unet_export(model_dir),
            **self.vae_exports(model_dir),
        } | self.derived_exports(model_dir)

    def prompt_encoders(self) -> tuple[PromptEncoder, ...]:
        """Both CLIP text encoders, in chunks."""
        length = self.dims.text_length
        return (PromptEncoder(TEXT_ENCODER, "tokenizer", length), PromptEncoder(TEXT_ENCODER_2, "tokenizer_2", length))

    async def condition(self, engines, tokenizers: Mapping, job, guided: bool) -> tuple[dict[str, np.ndarray], int]:
        """Hidden states of both encoders side by side, the pooled embedding and the time ids, per row.

        Weighted and in chunks (:mod:`serve.text_to_image.prompt_chunks`), each encoder's as many as the longer's;
        the pooled embedding is the first chunk's.
        """
        zero_negative = guided and not job.sampling.negative_prompt and self.dims.force_zeros_for_empty_prompt
        texts = prompt_rows(job, guided and not zero_negative)
        chunked = self.prompts(tokenizers, texts)
        prompts, prompts_2 = chunked.values()
        count = max(prompts.count, prompts_2.count)
        first, second = await asyncio.gather(
            prompts.encoded(engines, self.specs[TEXT_ENCODER], count),
            prompts_2.encoded(engines, self.specs[TEXT_ENCODER_2], count),
        )
        hidden = np.concatenate([first["hidden_states"], second["hidden_states"]], axis=-1)
        pooled = second["text_embeds"]
        if zero_negative:
            hidden = np.concatenate([np.zeros_like(hidden), hidden])
            pooled = np.concatenate([np.zeros_like(pooled), pooled])
        time_ids = np.array(
            [[job.sampling.height, job.sampling.width, 0, 0, job.sampling.height, job.sampling.width]], dtype=np.float32
        )
        return {
            "encoder_hidden_states": hidden,
            "text_embeds": pooled,
            "time_ids": np.repeat(time_ids, len(hidden), axis=0),
        }, truncated(chunked)
