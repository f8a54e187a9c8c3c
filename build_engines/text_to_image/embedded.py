"""What the embedded models made here share: their seed, tokenizers, a small VAE, SD's noise schedule and pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SEED = 20261121


def byte_vocabulary() -> dict[str, int]:
    """CLIP's byte-level alphabet with and without the end-of-word marker, plus the special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [f"{c}</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A byte-level CLIP tokenizer (no merges), 77 tokens, padding with ``pad_token`` (SDXL's second pads with "!")."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_vocabulary(), merges=[], model_max_length=77, pad_token=pad_token)


def clip_text_config(hidden: int, projection_dim: int, layers: int):
    """A small CLIP text encoder's config over :func:`byte_vocabulary` (its end token pads, as CLIP's does)."""
    from transformers import CLIPTextConfig

    vocab_size = len(byte_vocabulary())
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


T5_VOCAB_SIZE = 512
"""The tiny T5 encoders' embedding rows: more than their tokenizer's pieces (as T5's 32128 rows hold 32100 pieces)."""


def t5_tokenizer():
    """A T5 tokenizer (SentencePiece unigram, as T5's) over printable ASCII: each character alone or opening a word."""
    import string

    from transformers import T5Tokenizer

    characters = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -1.0) for c in characters] + [(c, -1.5) for c in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_vae(block_out_channels: tuple[int, ...], latent_channels: int = 4, **config):
    """A small ``AutoencoderKL`` (one layer per block, 8 norm groups, 256 px tiles); ``config`` overrides the rest."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **{
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": latent_channels,
            "block_out_channels": block_out_channels,
            "norm_num_groups": 8,
            "layers_per_block": 1,
            "down_block_types": ("DownEncoderBlock2D",) * len(block_out_channels),
            "up_block_types": ("UpDecoderBlock2D",) * len(block_out_channels),
            "sample_size": 256,
            **config,
        }
    )


def sd_scheduler():
    """Stable Diffusion 1.x's DDIM schedule (scaled-linear betas from 0.00085 to 0.012, steps offset by one)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A ``StableDiffusionPipeline`` of these components, without a safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_embedded(pipeline, name: str, out_dir: Path) -> Path:
    """Save the embedded model ``name``'s pipeline in diffusers format under ``out_dir``; log its denoiser's size."""
    pipeline.save_pretrained(out_dir)
    unet = getattr(pipeline, "unet", None)
    denoiser, label = (unet, "UNet") if unet is not None else (pipeline.transformer, "transformer")
    parameters = sum(p.numel() for p in denoiser.parameters()) / 1e6
    logger.info("created embedded model %r (%s %.2f M parameters) in %s", name, label, parameters, out_dir)
    return out_dir
