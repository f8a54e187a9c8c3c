"""``easel train default``: train the embedded default text-to-image model on coloured icons, on CPU.

Stable-Diffusion layout, small: a word-level CLIP tokenizer (every caption word is one BPE token, any other text falls
back to bytes), a 2-layer CLIP text encoder, an ``AutoencoderKL`` with scale factor 4 (64x64 images <-> 16x16x4
latents) and a ``UNet2DConditionModel`` that predicts epsilon under SD's scaled-linear schedule, so DDIM, Euler and
DPM-Solver++ all sample it. Stage 1 trains the VAE; stage 2 trains the text encoder and UNet together on the VAE's
latents, with captions dropped 10 % of the time for classifier-free guidance and an EMA of the weights.

Seeded throughout and checkpointed every few hundred steps into a work folder, so the same command resumes where it
stopped and a run from scratch gives the same weights on the same machine. Never trains on
:func:`~build_engines.text_to_image.icons.held_out` pairings.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from build_engines.text_to_image.embedded import SEED, sd_pipeline, sd_scheduler, tiny_vae
from build_engines.text_to_image.icons import IMAGE_SIZE, TEMPLATES, caption_words, render_pairings, training_pairings

logger = logging.getLogger(__name__)

TEXT_LENGTH = 16  # captions are at most 8 tokens with their start and end tokens
TEXT_HIDDEN = 64
LATENT_CHANNELS = 4
VAE_CHANNELS = (8, 16, 16)  # 3 blocks: scale factor 4
UNET_CHANNELS = (32, 64, 64)
CAPTION_DROPOUT = 0.1


@dataclass(frozen=True)
class TrainSettings:
    """Steps, batch sizes and learning rates of both stages."""

    vae_steps: int = 2000
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 2e-3
    unet_steps: int = 12000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    ema_decay: float = 0.999
    checkpoint_every: int = 500

    @classmethod
    def quick(cls) -> TrainSettings:
        """A seconds-long smoke run (the pipeline end to end, not a useful model)."""
        return cls(vae_steps=3, vae_batch=4, vae_crop=32, unet_steps=3, unet_batch=4, checkpoint_every=2)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that turn each of ``words`` into one token (most frequent pair first, ties by name: deterministic)."""
    corpus = [tuple(word[:-1]) + (word[-1] + "</w>",) for word in set(words)]
    merges = []
    while pairs := Counter(pair for symbols in corpus for pair in zip(symbols, symbols[1:], strict=False)):
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        corpus = [_merge(symbols, best) for symbols in corpus]
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged, i = [], 0
    while i < len(symbols):
        if symbols[i : i + 2] == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def write_tokenizer(path: Path) -> int:
    """A CLIP tokenizer over the byte alphabet plus BPE merges that make every caption word one token.

    Returns the vocabulary size (the start and end tokens are its last two ids).
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    merges = learn_merges(caption_words())
    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [f"{c}</w>" for c in alphabet]
    tokens += list(dict.fromkeys(a + b for a, b in merges if a + b not in tokens))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_LENGTH).save_pretrained(path)
    return len(vocab)


def make_models(vocab_size: int):
    """Fresh (seeded) VAE, text encoder, UNet and scheduler of the default architecture."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    # normalising all channels together keeps their ratios: the colour
    vae = tiny_vae(VAE_CHANNELS, LATENT_CHANNELS, norm_num_groups=1, sample_size=IMAGE_SIZE)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=2 * TEXT_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TEXT_LENGTH,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=UNET_CHANNELS,
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(UNET_CHANNELS) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(UNET_CHANNELS) - 1) + ("UpBlock2D",),
    )
    return vae, text_encoder, unet, sd_scheduler()


class _Checkpoint:
    """One stage's resumable state in ``work_dir/<stage>.pt``: its modules (by key), optimiser, RNG and step.

    Saved every ``every`` steps and after the last (``total``).
    """

    def __init__(
        self, work_dir: Path, stage: str, modules: dict[str, torch.nn.Module], optimizer, generator, every: int
    ) -> None:
        self.path = work_dir / f"{stage}.pt"
        self.modules, self.optimizer, self.generator, self.every = modules, optimizer, generator, every

    def resume(self) -> int:
        """Load the saved state, if any, into the modules, optimiser and RNG; the step to go on from (0: none)."""
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=False)
        for key, module in self.modules.items():
            module.load_state_dict(state[key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        return state["step"]

    def after(self, step: int, total: int) -> None:
        """Save the state after ``step`` (0-based) if it ends an interval of ``every`` steps or the stage."""
        if (step + 1) % self.every and step + 1 != total:
            return
        state = {key: module.state_dict() for key, module in self.modules.items()}
        state |= {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(), "step": step + 1}
        partial = self.path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(self.path)


def _optimise(optimizer, loss: torch.Tensor, module: torch.nn.Module, learning_rate: float) -> None:
    """One optimiser step on ``loss``: gradients clipped to norm 1, at ``learning_rate``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    optimizer.step()


class _Progress:
    """Logs step, loss and an ETA every ``every`` steps."""

    def __init__(self, stage: str, total: int, start: int, every: int = 25) -> None:
        self.stage, self.total, self.start, self.every = stage, total, start, every
        self.started = time.perf_counter()
        self.losses: list[float] = []

    def step(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every and step + 1 != self.total:
            return
        elapsed = time.perf_counter() - self.started
        rate = (step + 1 - self.start) / max(elapsed, 1e-9)
        logger.info(
            "%s step %d/%d  loss %.4f  %.2f steps/s  eta %.0f min",
            self.stage,
            step + 1,
            self.total,
            float(np.mean(self.losses[-self.every :])),
            rate,
            (self.total - step - 1) / max(rate, 1e-9) / 60,
        )


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(vae, images: torch.Tensor, settings: TrainSettings, work_dir: Path) -> None:
    """Stage 1: reconstruct random ``vae_crop`` squares of the icons, resumably.

    Loss: L1 + MSE, the MSE of 4x-downsampled images (colour, which the VAE otherwise learns last), a tiny KL term.
    The convolutions do not care about the crop; a crop costs a quarter of a whole icon.
    """
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(SEED + 1)
    checkpoint = _Checkpoint(work_dir, "vae", {"model": vae}, optimizer, generator, settings.checkpoint_every)
    start = checkpoint.resume()
    progress = _Progress("vae", settings.vae_steps, start)
    vae.train()
    for step in range(start, settings.vae_steps):
        batch = _crops(images, settings.vae_batch, settings.vae_crop, generator)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        loss = (
            F.l1_loss(reconstruction, batch)
            + F.mse_loss(reconstruction, batch)
            + F.mse_loss(F.avg_pool2d(reconstruction, 4), F.avg_pool2d(batch, 4))
            + 1e-6 * posterior.kl().mean()
        )
        _optimise(optimizer, loss, vae, settings.vae_lr * _cosine(step, settings.vae_steps))
        progress.step(step, loss.item())
        checkpoint.after(step, settings.vae_steps)
    vae.eval()


def _crops(images: torch.Tensor, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` crops, each of a random image."""
    index = torch.randint(len(images), (count,), generator=generator)
    corners = torch.randint(images.shape[-1] - size + 1, (count, 2), generator=generator)
    return torch.stack(
        [images[i, :, y : y + size, x : x + size] for i, (y, x) in zip(index, corners.tolist(), strict=True)]
    )


def _cosine(step: int, total: int, warmup: int = 100) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of ``images`` (unscaled)."""
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(64)])


class _Denoiser(torch.nn.Module):
    """Text encoder and UNet as one module, for one optimiser and one EMA."""

    def __init__(self, text_encoder, unet) -> None:
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder(ids).last_hidden_state
        return self.unet(noisy, timesteps, hidden).sample


def train_denoiser(
    denoiser: _Denoiser,
    ema: _Denoiser,
    latents: torch.Tensor,
    captions: torch.Tensor,
    empty: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    settings: TrainSettings,
    work_dir: Path,
) -> None:
    """Stage 2: epsilon prediction, min-SNR-5 weighted; ``captions[i, k]``: the ids of latent i's k-th caption."""
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=settings.unet_lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(SEED + 2)
    modules = {"model": denoiser, "ema": ema}
    checkpoint = _Checkpoint(work_dir, "denoiser", modules, optimizer, generator, settings.checkpoint_every)
    start = checkpoint.resume()
    progress = _Progress("text_encoder+unet", settings.unet_steps, start)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    denoiser.train()
    for step in range(start, settings.unet_steps):
        index = torch.randint(len(latents), (settings.unet_batch,), generator=generator)
        template = torch.randint(captions.shape[1], (settings.unet_batch,), generator=generator)
        ids = captions[index, template]
        dropped = torch.rand(settings.unet_batch, generator=generator) < CAPTION_DROPOUT
        ids = torch.where(dropped[:, None], empty, ids)
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(len(alphas_cumprod), (settings.unet_batch,), generator=generator)
        alpha = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        prediction = denoiser(noisy, timesteps, ids)
        weight = torch.clamp(snr[timesteps], max=5.0) / snr[timesteps]
        loss = (weight * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        _optimise(optimizer, loss, denoiser, settings.unet_lr * _cosine(step, settings.unet_steps))
        _update_ema(ema, denoiser, min(settings.ema_decay, (1 + step) / (10 + step)))
        progress.step(step, loss.item())
        checkpoint.after(step, settings.unet_steps)


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
        averaged.lerp_(current, 1 - decay)


def _caption_ids(tokenizer, pairings) -> torch.Tensor:
    """Token ids [pairing, template, TEXT_LENGTH] of every training caption."""
    texts = [p.caption(t) for p in pairings for t in TEMPLATES]
    ids = tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
    return ids.input_ids.view(len(pairings), len(TEMPLATES), TEXT_LENGTH)


def train(out_dir: Path, work_dir: Path, settings: TrainSettings | None = None, threads: int = 1) -> Path:
    """Train both stages (resuming from ``work_dir``) and save the diffusers model in ``out_dir``."""
    from transformers import CLIPTokenizer

    settings = settings or TrainSettings()
    torch.set_num_threads(threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    vocab_size = write_tokenizer(work_dir / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(work_dir / "tokenizer")
    vae, text_encoder, unet, scheduler = make_models(vocab_size)
    pairings = training_pairings()
    logger.info("rendering %d training pairings at %dx%d", len(pairings), IMAGE_SIZE, IMAGE_SIZE)
    images = _to_tensor(render_pairings(pairings))

    train_vae(vae, images, settings, work_dir)
    latents = encode_latents(vae, images)
    # diffusers only scales latents (no shift): the root mean square, not the std, makes them unit-sized
    scaling = 1.0 / latents.pow(2).mean().sqrt().item()
    vae.register_to_config(scaling_factor=scaling)
    logger.info("VAE latents: mean %.3f, std %.3f -> scaling factor %.4f", latents.mean(), latents.std(), scaling)

    denoiser = _Denoiser(text_encoder, unet)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    empty = tokenizer("", padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt").input_ids[0]
    alphas = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
    train_denoiser(
        denoiser, ema, latents * scaling, _caption_ids(tokenizer, pairings), empty, alphas, settings, work_dir
    )

    sd_pipeline(vae, ema.text_encoder, tokenizer, ema.unet, scheduler).save_pretrained(out_dir)
    logger.info("saved the trained default model in %s", out_dir)
    return out_dir
