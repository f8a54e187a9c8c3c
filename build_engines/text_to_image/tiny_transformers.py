"""The embedded tiny transformer models: SD3's and Flux's layouts at toy sizes, created locally and deterministically.

``tiny-sd3``: two CLIP encoders with projections of different widths (so a mix-up of their outputs changes shapes),
a T5 encoder, an MMDiT transformer, a 16-channel VAE with SD3's scaling and shift, SD3's shifted flow-matching
scheduler. ``tiny-flux`` (dev-like: the guidance scale embedded, dynamic shift) and ``tiny-flux-schnell`` (neither):
CLIP for the pooled embedding, T5 for the sequence, a Flux transformer (double- and single-stream blocks, rotary
positions), a VAE with Flux's scaling and shift. Byte-level CLIP tokenizers and a character-level T5 tokenizer
(:func:`~build_engines.text_to_image.embedded.t5_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

from build_engines.text_to_image.embedded import (
    SEED,
    T5_VOCAB_SIZE,
    clip_text_config,
    clip_tokenizer,
    save_embedded,
    t5_tokenizer,
    tiny_vae,
)

LATENT_CHANNELS = 16


def _clip(hidden: int, projection_dim: int | None):
    """A 2-layer CLIP text encoder, with a projection to ``projection_dim`` unless it is None."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = clip_text_config(hidden, projection_dim or hidden, layers=2)
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def _t5(d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=T5_VOCAB_SIZE,
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
        )
    )


def _vae(scaling_factor: float, shift_factor: float):
    """SD3's and Flux's VAE shape: 16 latent channels, a shift, no quant convolutions."""
    return tiny_vae(
        (8, 16, 16, 16),
        LATENT_CHANNELS,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )


def create_tiny_sd3(out_dir: Path) -> Path:
    """Create and save the embedded tiny SD3 in diffusers format under ``out_dir``."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(SEED)
    text_encoder, text_encoder_2 = _clip(32, 32), _clip(48, 40)
    text_encoder_3 = _t5(96)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=96,
        caption_projection_dim=32,
        pooled_projection_dim=32 + 40,
        out_channels=LATENT_CHANNELS,
        pos_embed_max_size=64,  # 1024 pixels: the API's largest side
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(1.5305, 0.0609),
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer(),
    )
    return save_embedded(pipeline, "tiny-sd3", out_dir)


def create_tiny_flux(out_dir: Path, dev: bool = True) -> Path:
    """Create and save the embedded tiny Flux (``dev``: guidance embedded and a dynamic shift; else schnell-like)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(SEED)
    text_encoder, text_encoder_2 = _clip(32, None), _t5(64)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=dev,
        axes_dims_rope=(4, 6, 6),
    )
    if dev:  # a louder guidance embedding: a wrong guidance input shows in the image
        with torch.no_grad():
            transformer.time_text_embed.guidance_embedder.linear_2.weight.mul_(4)
    schedule = {"shift": 3.0, "use_dynamic_shifting": True} if dev else {"shift": 1.0, "use_dynamic_shifting": False}
    pipeline = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**schedule),
        vae=_vae(0.3611, 0.1159),
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
    )
    return save_embedded(pipeline, "tiny-flux" if dev else "tiny-flux-schnell", out_dir)
