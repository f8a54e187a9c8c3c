"""Flux (``FluxPipeline``): CLIP's pooled embedding and T5's hidden states condition a transformer on packed latents.

Flux's transformer takes latents packed into 2x2 patches (``[B, h/2 * w/2, 4C]``), with a position id per patch and
per text token, and a timestep divided by 1000. The engine does all of that inside its graph: it takes and returns
NCHW latents as every denoiser does, so the loop never sees the packing (the scheduler's step is elementwise, so
stepping the packed or the unpacked latents is the same). Flux dev embeds the guidance scale (the ``guidance`` input,
per row); schnell has no guidance at all. Neither runs classifier-free guidance: one row per image, the negative
prompt unused, as in ``FluxPipeline`` without ``true_cfg_scale``.
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
    PipelineDims,
    hidden_states_spec,
)
from serve.text_to_image.families.flow import PATCH, FlowFamily, sigmas
from serve.text_to_image.families.folder import pipeline_components, read_config
from serve.text_to_image.prompt_chunks import PromptEncoder, truncated
from serve.text_to_image.spec import TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, text_encoder_spec
from serve.triton.spec import ModelSpec, TensorSpec

if TYPE_CHECKING:
    from serve.text_to_image.families.exports import ExportModule

T5_LENGTH = 512
"""T5's token length: ``FluxPipeline``'s default ``max_sequence_length``."""


@dataclass(frozen=True)
class FluxDims(PipelineDims):
    """Flux dims: CLIP's pooled width, T5's width and length, and whether the transformer embeds the guidance."""

    pooled_dim: int
    joint_dim: int
    t5_length: int
    guidance_embeds: bool


class Flux(FlowFamily):
    """``FluxPipeline`` folders: dev (guidance embedded) and schnell (none)."""

    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    dims_type = FluxDims
    lora_engines = (TEXT_ENCODER, TRANSFORMER)  # not T5, as FluxPipeline's load_lora_weights
    components = pipeline_components(TRANSFORMER, encoders=2)

    @classmethod
    def read_dims(cls, model_dir: Path) -> FluxDims:
        """Dims from the configs; a transformer whose inputs do not fit these encoders and VAE is refused."""
        transformer = read_config(model_dir, TRANSFORMER)
        dims = FluxDims(
            pooled_dim=int(read_config(model_dir, "text_encoder")["hidden_size"]),
            joint_dim=int(read_config(model_dir, "text_encoder_2")["d_model"]),
            t5_length=T5_LENGTH,
            guidance_embeds=bool(transformer.get("guidance_embeds", False)),
            **cls.shared_dims(model_dir),
        )
        expected = {
            "in_channels": dims.latent_channels * PATCH * PATCH,
            "pooled_projection_dim": dims.pooled_dim,
            "joint_attention_dim": dims.joint_dim,
        }
        wrong = {key: transformer.get(key) for key, value in expected.items() if transformer.get(key) != value}
        if wrong or transformer.get("patch_size", 1) != 1:
            raise UnsupportedModel(
                f"{model_dir}: the transformer does not fit these encoders and VAE: {wrong or 'patch_size'} "
                f"(expected {expected}, patch_size 1)"
            )
        return dims

    def engine_specs(self) -> dict[str, ModelSpec]:
        """CLIP (pooled), T5 (hidden states), the transformer (and its guidance input for dev), the VAE decoder."""
        d = self.dims
        conditioning = (
            TensorSpec("encoder_hidden_states", "float32", (d.t5_length, d.joint_dim)),
            TensorSpec("pooled_projections", "float32", (d.pooled_dim,)),
        )
        if d.guidance_embeds:
            conditioning += (TensorSpec("guidance", "float32", ()),)
        return {
            TEXT_ENCODER: text_encoder_spec(
                TEXT_ENCODER, d.text_length, (TensorSpec("pooled", "float32", (d.pooled_dim,)),)
            ),
            TEXT_ENCODER_2: hidden_states_spec(TEXT_ENCODER_2, d.t5_length, d.joint_dim),
            TRANSFORMER: self.denoiser_with(conditioning),
            **self.vae_specs(),
        }

    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """CLIP's pooled output, T5, the transformer on NCHW latents, the VAE decoder (``force_upcast``: fp32)."""
        from serve.text_to_image.families.exports import ClipPooled, ExportModule, diffusers_model, text_encoder_export
        from serve.text_to_image.families.transformer_exports import FluxTransformerModule

        return {
            TEXT_ENCODER: text_encoder_export(model_dir, TEXT_ENCODER, "CLIPTextModel", ClipPooled),
            TEXT_ENCODER_2: text_encoder_export(model_dir, TEXT_ENCODER_2, "T5EncoderModel"),
            TRANSFORMER: ExportModule(
                lambda dtype: FluxTransformerModule(
                    diffusers_model("FluxTransformer2DModel", model_dir / TRANSFORMER, dtype)
                )
            ),
            **self.vae_exports(model_dir),
        }

    def classifier_free(self, job) -> bool:
        """Never: Flux dev embeds the guidance scale, schnell has none."""
        return False

    def set_timesteps(self, scheduler, job) -> None:
        """``FluxPipeline``'s sigmas, shifted by the patch count when the config asks (dev's dynamic shift)."""
        scheduler.set_timesteps(sigmas=sigmas(job.sampling.steps), mu=self.shift_mu(scheduler, job))

    def prompt_encoders(self) -> tuple[PromptEncoder, ...]:
        """CLIP (77 tokens, its pooled embedding), then T5 (:data:`T5_LENGTH`); one chunk each."""
        d = self.dims
        return (
            PromptEncoder(TEXT_ENCODER, "tokenizer", d.text_length, 1),
            PromptEncoder(TEXT_ENCODER_2, "tokenizer_2", d.t5_length, 1),
        )

    async def condition(self, engines, tokenizers: Mapping, job, guided: bool) -> tuple[dict[str, np.ndarray], int]:
        """T5's hidden states, CLIP's pooled embedding and (dev) the guidance scale, for the prompt's one row.

        Each encoder reads one chunk of its own length (T5's :data:`T5_LENGTH`, CLIP's 77), T5's weighted
        (:mod:`serve.text_to_image.prompt_chunks`); the tokens the most cut encoder (CLIP's, past 75) dropped are
        reported.
        """
        d = self.dims
        prompts = self.prompts(tokenizers, [job.sampling.prompt])
        clip_chunks, t5_chunks = prompts.values()
        clip, t5 = await asyncio.gather(
            clip_chunks.encoded(engines, self.specs[TEXT_ENCODER]),
            t5_chunks.encoded(engines, self.specs[TEXT_ENCODER_2]),
        )
        dropped = truncated(prompts)
        rows = {"encoder_hidden_states": t5["hidden_states"], "pooled_projections": clip["pooled"]}
        if d.guidance_embeds:
            rows["guidance"] = np.full(1, job.sampling.guidance_scale, np.float32)
        return rows, dropped
