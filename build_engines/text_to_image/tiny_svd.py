"""A tiny Stable Video Diffusion (``tiny-svd``): ``StableVideoDiffusionPipeline``'s layout at toy sizes, made locally.

A spatio-temporal UNet (8 input channels: the noisy latents and the still's latents), a CLIP vision encoder with a
projection at CLIP's 224 px (what the pipeline resizes the still to), a VAE with a temporal decoder, and SVD's own
Euler scheduler config (v-prediction, Karras sigmas from 700 to 0.002, continuous timesteps). The added time
embedding (fps, motion bucket, noise augmentation) is scaled up so that a wrong one shows in the frames.
"""

from __future__ import annotations

from pathlib import Path

from build_engines.text_to_image.embedded import SEED

EMBED_DIM = 32
TIME_EMBED_DIM = 8
FRAMES = 6


def create_tiny_svd(out_dir: Path) -> Path:
    """Create and save the tiny SVD in diffusers format under ``out_dir``."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(SEED)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=48,  # 96 px (a VAE of 2x): a default video of 128x72, as SVD's 768 px UNet's is 1024x576
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=EMBED_DIM,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=3 * TIME_EMBED_DIM,
        num_frames=FRAMES,
    )
    with torch.no_grad():  # a louder added embedding: a wrong fps, motion bucket or augmentation shows
        unet.add_embedding.linear_2.weight.mul_(4)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    )
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=EMBED_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,
            patch_size=32,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipeline = StableVideoDiffusionPipeline(
        vae=vae.eval(),
        image_encoder=encoder.eval(),
        unet=unet.eval(),
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipeline.save_pretrained(out_dir)
    return out_dir
