"""The embedded models: ``tiny``, the trained default (committed weights), and ``bench``, random weights made here.

Nothing is downloaded: ``tiny`` is read from :data:`TRAINED` (written by ``easel train default``), ``bench`` is a
deterministic random model created locally; ``tiny-xl`` is SDXL's layout (:mod:`.tiny_xl`); ``tiny-inpaint`` and
``tiny-xl-inpaint`` are ``tiny`` and ``tiny-xl`` as inpainting checkpoints (a 9-channel UNet, :mod:`.random_controls`);
``tiny-sd3``, ``tiny-flux`` (dev-like) and ``tiny-flux-schnell`` are the transformer families' layouts
(:mod:`.tiny_transformers`); ``tiny-svd`` is Stable Video Diffusion's (:mod:`.tiny_svd`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from build_engines.text_to_image.embedded import (
    SEED,
    byte_vocabulary,
    save_embedded,
    sd_pipeline,
    sd_scheduler,
    tiny_vae,
)

MODELS = (
    "tiny",
    "bench",
    "tiny-xl",
    "tiny-inpaint",
    "tiny-xl-inpaint",
    "tiny-sd3",
    "tiny-flux",
    "tiny-flux-schnell",
)
VIDEO_MODELS = ("tiny-svd",)
"""Embedded image-to-video models (``easel bench video``'s SVD rows; tests)."""
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


def schedule_variant(model_dir: Path, out_dir: Path, beta_end: float = 0.02) -> Path:
    """A second model made from ``model_dir``: its weights under another noise schedule.

    Its images differ, and so does its engine folder: stacks that serve several models use it (tests, ``easel bench
    models``).
    """
    import json

    if not (out_dir / "model_index.json").exists():
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(model_dir, out_dir)
        path = out_dir / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"beta_end": beta_end}, indent=2))
    return out_dir


def create_default_model(out_dir: Path, variant: str = "tiny") -> Path:
    """Create and save the embedded diffusers model ``variant`` in diffusers format under ``out_dir``."""
    if variant in TRAINED:
        shutil.copytree(TRAINED[variant], out_dir)
        return out_dir
    if variant == "tiny-xl":  # SDXL's layout (tiny_xl.py)
        from build_engines.text_to_image.tiny_xl import create_tiny_xl

        return create_tiny_xl(out_dir)
    if variant == "tiny-sd3":  # SD3's and Flux's layouts (tiny_transformers.py)
        from build_engines.text_to_image.tiny_transformers import create_tiny_sd3

        return create_tiny_sd3(out_dir)
    if variant == "tiny-svd":  # Stable Video Diffusion's layout (tiny_svd.py)
        from build_engines.text_to_image.tiny_svd import create_tiny_svd

        return create_tiny_svd(out_dir)
    if variant in ("tiny-flux", "tiny-flux-schnell"):
        from build_engines.text_to_image.tiny_transformers import create_tiny_flux

        return create_tiny_flux(out_dir, dev=variant == "tiny-flux")
    import torch
    from diffusers import UNet2DConditionModel
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
    vae = tiny_vae(sizes["vae_channels"])
    scheduler = sd_scheduler()
    tokenizer = CLIPTokenizer.from_pretrained(out_dir / "tokenizer")
    return save_embedded(sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler), variant, out_dir)
