"""SD3 (``StableDiffusion3Pipeline``): two CLIP encoders and an optional T5 condition an MMDiT transformer.

The transformer sees one token sequence: both CLIP encoders' penultimate hidden states side by side, zero-padded to
T5's width, followed by T5's last hidden state (zeros when the folder has no T5, as diffusers allows); and both
encoders' pooled, projected embeddings side by side (``pooled_projections``). Guidance is classifier-free, with the
negative prompt encoded as any prompt ("" included).
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
    prompt_rows,
)
from serve.text_to_image.families.flow import PATCH, FlowFamily
from serve.text_to_image.families.folder import Component, pipeline_components, read_config, read_model_index
from serve.text_to_image.prompt_chunks import PromptEncoder, truncated
from serve.text_to_image.spec import TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3, TRANSFORMER
from serve.triton.spec import ModelSpec, TensorSpec

if TYPE_CHECKING:
    from serve.text_to_image.families.exports import ExportModule

T5_LENGTH = 256
"""T5's token length: ``StableDiffusion3Pipeline``'s default ``max_sequence_length``."""
T5_COMPONENTS = ("text_encoder_3", "tokenizer_3")


@dataclass(frozen=True)
class SD3Dims(PipelineDims):
    """SD3 dims: the CLIP encoders' widths and projections, T5's width (the transformer's) and length, whether it is."""

    text_hidden: int
    text_hidden_2: int
    projection_dim: int
    projection_dim_2: int
    joint_dim: int
    t5_length: int
    t5: bool


class StableDiffusion3(FlowFamily):
    """``StableDiffusion3Pipeline`` folders (SD3 and SD3.5), with or without T5."""

    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    dims_type = SD3Dims
    max_shift_default = 1.16
    lora_engines = (TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER)
    components = pipeline_components(TRANSFORMER, encoders=3, optional=1)

    @classmethod
    def read_dims(cls, model_dir: Path) -> SD3Dims:
        """Dims from the configs; a transformer whose inputs do not fit these encoders is refused."""
        index = read_model_index(model_dir)
        first, second = read_config(model_dir, "text_encoder"), read_config(model_dir, "text_encoder_2")
        transformer = read_config(model_dir, TRANSFORMER)
        t5 = all(index.get(name) not in (None, [None, None]) for name in T5_COMPONENTS)
        dims = SD3Dims(
            text_hidden=int(first["hidden_size"]),
            text_hidden_2=int(second["hidden_size"]),
            projection_dim=int(first["projection_dim"]),
            projection_dim_2=int(second["projection_dim"]),
            joint_dim=int(transformer["joint_attention_dim"]),
            t5_length=T5_LENGTH,
            t5=t5,
            **cls.shared_dims(model_dir),
        )
        pooled = dims.projection_dim + dims.projection_dim_2
        if transformer.get("patch_size", PATCH) != PATCH or transformer["pooled_projection_dim"] != pooled:
            raise UnsupportedModel(
                f"{model_dir}: the transformer takes patches of {transformer.get('patch_size')} and pooled "
                f"projections of {transformer['pooled_projection_dim']} (these encoders give {pooled})"
            )
        if t5 and read_config(model_dir, "text_encoder_3")["d_model"] != dims.joint_dim:
            raise UnsupportedModel(f"{model_dir}: T5's width differs from the transformer's joint_attention_dim")
        return dims

    def uses(self, component: Component) -> bool:
        """T5 and its tokenizer only when the folder has them."""
        return self.dims.t5 or component.folder not in T5_COMPONENTS

    def engine_specs(self) -> dict[str, ModelSpec]:
        """Two CLIP encoders (penultimate hidden states and pooled embeddings), T5 if present, the transformer, VAE."""
        d = self.dims
        specs = {
            TEXT_ENCODER: hidden_states_spec(TEXT_ENCODER, d.text_length, d.text_hidden, d.projection_dim),
            TEXT_ENCODER_2: hidden_states_spec(TEXT_ENCODER_2, d.text_length, d.text_hidden_2, d.projection_dim_2),
        }
        if d.t5:
            specs[TEXT_ENCODER_3] = hidden_states_spec(TEXT_ENCODER_3, d.t5_length, d.joint_dim)
        specs[TRANSFORMER] = self.denoiser_with(
            (
                TensorSpec("encoder_hidden_states", "float32", (d.text_length + d.t5_length, d.joint_dim)),
                TensorSpec("pooled_projections", "float32", (d.projection_dim + d.projection_dim_2,)),
            )
        )
        return specs | self.vae_specs()

    def export_modules(self, model_dir: Path) -> dict[str, ExportModule]:
        """Both CLIP encoders with their projections, T5, the transformer, the VAE decoder (``force_upcast``: fp32)."""
        from serve.text_to_image.families.exports import (
            ExportModule,
            clip_penultimate_export,
            diffusers_model,
            text_encoder_export,
        )
        from serve.text_to_image.families.transformer_exports import FlowTransformerModule

        modules = {
            TEXT_ENCODER: clip_penultimate_export(model_dir, TEXT_ENCODER, projection=True),
            TEXT_ENCODER_2: clip_penultimate_export(model_dir, TEXT_ENCODER_2, projection=True),
        }
        if self.dims.t5:
            modules[TEXT_ENCODER_3] = text_encoder_export(model_dir, TEXT_ENCODER_3, "T5EncoderModel")
        transformer = model_dir / TRANSFORMER
        modules[TRANSFORMER] = ExportModule(
            lambda dtype: FlowTransformerModule(diffusers_model("SD3Transformer2DModel", transformer, dtype))
        )
        return modules | self.vae_exports(model_dir)

    def set_timesteps(self, scheduler, job) -> None:
        """The scheduler's own schedule, shifted by the patch count when its config asks (SD3.5's dynamic shift)."""
        if scheduler.config.get("use_dynamic_shifting"):
            scheduler.set_timesteps(job.sampling.steps, mu=self.shift_mu(scheduler, job))
        else:
            scheduler.set_timesteps(job.sampling.steps)

    def prompt_encoders(self) -> tuple[PromptEncoder, ...]:
        """Both CLIP encoders (77 tokens), then T5 (:data:`T5_LENGTH`) where the folder has it; one chunk each."""
        d = self.dims
        encoders = (PromptEncoder(TEXT_ENCODER, "tokenizer", d.text_length, 1),)
        encoders += (PromptEncoder(TEXT_ENCODER_2, "tokenizer_2", d.text_length, 1),)
        return encoders + ((PromptEncoder(TEXT_ENCODER_3, "tokenizer_3", d.t5_length, 1),) if d.t5 else ())

    async def condition(self, engines, tokenizers: Mapping, job, guided: bool) -> tuple[dict[str, np.ndarray], int]:
        """One token sequence per row (both CLIPs side by side, padded to T5's width, then T5) and the pooled pair.

        Each encoder reads one chunk of its own length (T5's :data:`T5_LENGTH`, CLIP's 77), weighted
        (:mod:`serve.text_to_image.prompt_chunks`); the tokens the most cut encoder (CLIP's, past 75) dropped are
        reported.
        """
        d = self.dims
        texts = prompt_rows(job, guided)
        prompts = self.prompts(tokenizers, texts)
        calls = [chunks.encoded(engines, self.specs[engine]) for engine, chunks in prompts.items()]
        dropped = truncated(prompts)
        first, second, *t5 = await asyncio.gather(*calls)
        clip = np.concatenate([first["hidden_states"], second["hidden_states"]], axis=-1)
        clip = np.pad(clip, ((0, 0), (0, 0), (0, d.joint_dim - clip.shape[-1])))
        t5_hidden = t5[0]["hidden_states"] if t5 else np.zeros((len(texts), d.t5_length, d.joint_dim), np.float32)
        pooled = np.concatenate([first["text_embeds"], second["text_embeds"]], axis=-1)
        return {
            "encoder_hidden_states": np.concatenate([clip, t5_hidden], axis=1).astype(np.float32),
            "pooled_projections": pooled,
        }, dropped
