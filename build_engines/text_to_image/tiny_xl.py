"""The embedded tiny SDXL (``tiny-xl``): SDXL's layout at toy sizes, created locally and deterministically.

Two CLIP text encoders of different widths (the second with a projection to yet another width), so a mix-up of the
encoders' outputs cannot go unnoticed; a UNet with SDXL's ``text_time`` added embedding and per-block transformer
depths (its added embedding scaled up, so that a wrong time id changes the image by more than a parity test
allows); a VAE with SDXL's scaling factor and ``force_upcast``; SDXL's Euler scheduler config; byte-level tokenizers,
the second padding with ``!`` as SDXL's does.
"""

from __future__ import annotations

from pathlib import Path

from build_engines.text_to_image.embedded import SEED, clip_text_config, clip_tokenizer, save_embedded, tiny_vae

TEXT_HIDDEN = 32
TEXT_HIDDEN_2 = 48
POOLED_DIM = 40
TIME_EMBED_DIM = 8


def create_tiny_xl(out_dir: Path) -> Path:
    """Create and save the embedded tiny SDXL in diffusers format under ``out_dir``."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer("!")
    text_encoder = CLIPTextModel(clip_text_config(TEXT_HIDDEN, TEXT_HIDDEN, layers=3))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(TEXT_HIDDEN_2, POOLED_DIM, layers=3))
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=TEXT_HIDDEN + TEXT_HIDDEN_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + POOLED_DIM,
    )
    with torch.no_grad():  # a louder added embedding: a wrong time id or pooled embedding shows in the image
        unet.add_embedding.linear_2.weight.mul_(4)
    vae = tiny_vae((8, 16, 16, 16), scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return save_embedded(pipeline, "tiny-xl", out_dir)
