"""The embedded models: ``tiny``, the trained default (committed weights), and ``bench``, random weights made here.

Nothing is downloaded: ``tiny`` is read from :data:`TRAINED` (written by ``easel train default``), ``bench`` is a
deterministic random model created locally; ``tiny-xl`` is SDXL's layout (:mod:`.tiny_xl`); ``tiny-inpaint`` and
``tiny-xl-inpaint`` are ``tiny`` and ``tiny-xl`` as inpainting checkpoints (a 9-channel UNet, :mod:`.random_controls`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from build_engines.text_to_image.embedded import SEED, byte_vocabulary

logger = logging.getLogger(__name__)

MODELS = ("tiny", "bench", "tiny-xl", "tiny-inpaint", "tiny-xl-inpaint")
INPAINTING = "-inpaint"
"""A variant's suffix for its base model as an inpainting checkpoint."""
# Embedded models whose weights are committed: variant -> diffusers folder.
TRAINED = {"tiny": Path(__file__).resolve().parent / "default"}


def _write_tokenizer(path: Path) -> int:
    """Write a byte-level CLIP tokenizer (no merges) and return its vocabulary size."""
    from transformers import CLIPTokenizer

    vocab = byte_vocabulary()
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(path)
    return len(vocab)


def _sizes(variant: str) -> dict:
    if variant == "bench":  # ~17M-parameter UNet for the benchmark (issue 4)
        return {
            "text_hidden": 64,
            "text_layers": 2,
            "unet_channels": (64, 128, 256),
            "unet_layers": 1,
            "vae_channels": (16, 32, 32, 32),
        }
    raise ValueError(f"unknown embedded model {variant!r}; choose one of {MODELS}")


def create_default_model(out_dir: Path, variant: str = "tiny") -> Path:
    """Create and save the embedded diffusers model ``variant`` in diffusers format under ``out_dir``."""
    if variant in TRAINED:
        shutil.copytree(TRAINED[variant], out_dir)
        return out_dir
    if variant == "tiny-xl":  # SDXL's layout (tiny_xl.py)
        from build_engines.text_to_image.tiny_xl import create_tiny_xl

        return create_tiny_xl(out_dir)
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sizes = _sizes(variant)
    torch.manual_seed(SEED)
    vocab_size = _write_tokenizer(out_dir / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=sizes["text_hidden"],
            intermediate_size=2 * sizes["text_hidden"],
            num_hidden_layers=sizes["text_layers"],
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    channels = sizes["unet_channels"]
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=sizes["unet_layers"],
        block_out_channels=channels,
        norm_num_groups=8,
        cross_attention_dim=sizes["text_hidden"],
        attention_head_dim=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
    )
    vae_channels = sizes["vae_channels"]
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=vae_channels,
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        sample_size=256,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(out_dir / "tokenizer"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out_dir)
    logger.info(
        "created embedded model %r (UNet %.2f M parameters) in %s",
        variant,
        sum(p.numel() for p in unet.parameters()) / 1e6,
        out_dir,
    )
    return out_dir
