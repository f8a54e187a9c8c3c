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

import numpy as np
import torch

from serve.errors import UnsupportedModel
from serve.text_to_image.families.base import (
    PipelineDims,
    hidden_states_spec,
)
from serve.text_to_image.families.exports import ClipPooled, ExportModule, diffusers_model, text_encoder_export
from serve.text_to_image.families.flow import PATCH, FlowFamily, FlowTransformerModule, sigmas
from serve.text_to_image.families.folder import pipeline_components, read_config
from serve.text_to_image.prompt_chunks import PromptEncoder, truncated
from serve.text_to_image.spec import TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, text_encoder_spec
from serve.triton.spec import ModelSpec, TensorSpec

T5_LENGTH = 512
"""T5's token length: ``FluxPipeline``'s default ``max_sequence_length``."""


@dataclass(frozen=True)
class FluxDims(PipelineDims):
    """Flux dims: CLIP's pooled width, T5's width and length, and whether the transformer embeds the guidance."""

    pooled_dim: int
    joint_dim: int
    t5_length: int
    guidance_embeds: bool


class TracedFluxAttention:
    """diffusers' ``FluxAttnProcessor`` (without fused projections or IP-Adapter), its rotary embedding traceable.

    diffusers' ``apply_rotary_emb`` reshapes by ``x.shape[:-1]``, which the TorchScript tracer records as constants
    (the traced batch and token count); ``unflatten`` of the last axis keeps every size dynamic.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        """Joint attention over the text tokens (when given) and the image tokens."""

        def heads(projection, states):
            return projection(states).unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(heads(attn.to_q, hidden_states))
        key = attn.norm_k(heads(attn.to_k, hidden_states))
        value = heads(attn.to_v, hidden_states)
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            query = torch.cat([attn.norm_added_q(heads(attn.add_q_proj, encoder_hidden_states)), query], dim=1)
            key = torch.cat([attn.norm_added_k(heads(attn.add_k_proj, encoder_hidden_states)), key], dim=1)
            value = torch.cat([heads(attn.add_v_proj, encoder_hidden_states), value], dim=1)
        if image_rotary_emb is not None:
            query, key = _rotated(query, image_rotary_emb), _rotated(key, image_rotary_emb)
        attended = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask
        )
        attended = attended.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return attended
        text = encoder_hidden_states.shape[1]
        image = attn.to_out[1](attn.to_out[0](attended[:, text:].contiguous()))
        return image, attn.to_add_out(attended[:, :text].contiguous())


def _rotated(x, frequencies):
    """``apply_rotary_emb(x, frequencies, sequence_dim=1)`` of diffusers, for ``x`` ``[B, S, H, D]``."""
    cos, sin = (f[None, :, None, :] for f in frequencies)
    real, imaginary = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class FluxTransformerModule(FlowTransformerModule):
    """The Flux transformer on NCHW latents: packing, position ids and the timestep's scale inside the graph."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__(transformer)
        self.transformer.set_attn_processor(TracedFluxAttention())

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections, *guidance):
        """The predicted velocity, unpacked to the latents' layout."""
        batch, channels, height, width = sample.shape
        rows, columns = height // PATCH, width // PATCH
        packed = sample.view(batch, channels, rows, PATCH, columns, PATCH).permute(0, 2, 4, 1, 3, 5)
        packed = packed.reshape(batch, rows * columns, channels * PATCH * PATCH)
        row_ids = torch.arange(rows, dtype=sample.dtype).view(rows, 1).expand(rows, columns)
        column_ids = torch.arange(columns, dtype=sample.dtype).view(1, columns).expand(rows, columns)
        image_ids = torch.stack([torch.zeros_like(row_ids), row_ids, column_ids], dim=-1).reshape(rows * columns, 3)
        text_ids = torch.zeros(encoder_hidden_states.shape[1], 3, dtype=sample.dtype)
        guidance = guidance[0] if guidance else None
        velocity = self.velocity(
            packed,
            timestep / 1000,
            encoder_hidden_states,
            pooled_projections,
            guidance=guidance,
            txt_ids=text_ids,
            img_ids=image_ids,
        )
        velocity = velocity.view(batch, rows, columns, channels, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
        return velocity.reshape(batch, channels, height, width)


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
