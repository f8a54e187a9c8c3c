"""``easel train lcm``: distil the embedded default's UNet into a latent consistency model (LCM) that draws in 4 steps.

Latent consistency distillation (Luo et al. 2023, as diffusers' ``examples/consistency_distillation`` runs it): the
student starts as the teacher's UNet; for a training latent noised to a timestep of the 50-step DDIM skeleton, the
teacher (classifier-free guided at the default guidance, ``guidance_scale`` 7.5 with the empty negative prompt) takes
one DDIM step back to the previous skeleton timestep, and the student learns to map both points to the same clean
latents through LCM's boundary-condition parameterisation (``c_skip``, ``c_out``), the later point judged by an EMA
of the student (the target network). The student keeps the teacher's architecture and inputs (no guidance
embedding: the guidance is distilled in), so it is served as one more engine of the same spec and sampled by
diffusers' ``LCMScheduler`` with guidance off: one UNet row per step.

The text encoder, VAE and tokenizer stay the teacher's (the student is the UNet alone). Seeded, checkpointed every few
hundred steps into a work folder and resumed from it, progress and ETA logged. Never trains on
:func:`~build_engines.text_to_image.icons.held_out` pairings.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from build_engines.text_to_image.embedded import SEED
from build_engines.text_to_image.icons import render_pairings, training_pairings
from build_engines.text_to_image.train_default import (
    TEXT_LENGTH,
    _caption_ids,
    _Checkpoint,
    _cosine,
    _optimise,
    _Progress,
    _to_tensor,
    _update_ema,
    encode_latents,
)

logger = logging.getLogger(__name__)

DISTILLED_UNET = "unet_lcm"
"""The student's folder inside the teacher's diffusers folder."""


@dataclass(frozen=True)
class DistilSettings:
    """The distillation's steps, batch, learning rate and LCM's constants (diffusers' script's defaults)."""

    steps: int = 4000
    batch: int = 32
    lr: float = 2e-4
    guidance_scale: float = 7.5  # the teacher's guidance the student learns (the API's default)
    skeleton_steps: int = 50  # DDIM timesteps the teacher's solver steps between (LCMScheduler's original steps)
    target_decay: float = 0.95  # EMA of the student that gives the targets
    timestep_scaling: float = 10.0  # LCMScheduler's
    checkpoint_every: int = 250

    @classmethod
    def quick(cls) -> DistilSettings:
        """A seconds-long smoke run (the pipeline end to end, not a useful model)."""
        return cls(steps=3, batch=4, checkpoint_every=2)


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float, sigma_data: float = 0.5):
    """LCM's ``c_skip`` and ``c_out`` at ``timesteps`` (as ``LCMScheduler``'s boundary-condition scalings)."""
    scaled = timestep_scaling * timesteps.float()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


class _Skeleton:
    """The DDIM skeleton the teacher steps along: timesteps ``[19, 39, ..., 999]`` and their alphas."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int) -> None:
        ratio = len(alphas_cumprod) // steps
        self.stride = ratio
        self.timesteps = torch.arange(1, steps + 1) * ratio - 1
        self.alphas = alphas_cumprod

    def x0_and_eps(self, eps: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor):
        """The clean latents an epsilon prediction implies at ``timesteps``, and the epsilon."""
        alpha = self.alphas[timesteps].view(-1, 1, 1, 1)
        return (sample - (1 - alpha).sqrt() * eps) / alpha.sqrt(), eps

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM to timestep ``previous`` (``alphas_cumprod[0]`` for the skeleton's first step)."""
        alpha = self.alphas[previous.clamp(min=0)].view(-1, 1, 1, 1)
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps


def distil(
    unet,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    empty: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    settings: DistilSettings,
    work_dir: Path,
):
    """Latent consistency distillation of ``unet``; returns the student.

    ``hidden[i, k]``: the text encoder's states of latent i's k-th caption; ``empty``: the empty prompt's.
    """
    teacher = copy.deepcopy(unet).requires_grad_(False).eval()
    student = copy.deepcopy(unet).train()
    target = copy.deepcopy(unet).requires_grad_(False).eval()
    skeleton = _Skeleton(alphas_cumprod, settings.skeleton_steps)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(SEED + 3)
    modules = {"student": student, "target": target}
    checkpoint = _Checkpoint(work_dir, "lcm", modules, optimizer, generator, settings.checkpoint_every)
    start = checkpoint.resume()
    progress = _Progress("lcm", settings.steps, start)
    w = settings.guidance_scale
    for step in range(start, settings.steps):
        index = torch.randint(len(latents), (settings.batch,), generator=generator)
        template = torch.randint(hidden.shape[1], (settings.batch,), generator=generator)
        states = hidden[index, template]
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        point = torch.randint(settings.skeleton_steps, (settings.batch,), generator=generator)
        t_start = skeleton.timesteps[point]
        t_end = (t_start - skeleton.stride).clamp(min=0)
        alpha = alphas_cumprod[t_start].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise

        skip_start, out_start = boundary_scalings(t_start, settings.timestep_scaling)
        skip_end, out_end = boundary_scalings(t_end, settings.timestep_scaling)
        student_x0, _ = skeleton.x0_and_eps(student(noisy, t_start, states).sample, noisy, t_start)
        prediction = skip_start * noisy + out_start * student_x0
        with torch.no_grad():
            both = teacher(
                torch.cat([noisy, noisy]), torch.cat([t_start, t_start]), torch.cat([empty.expand_as(states), states])
            ).sample
            uncond, cond = both.chunk(2)
            eps = uncond + w * (cond - uncond)
            x0, eps = skeleton.x0_and_eps(eps, noisy, t_start)
            previous = skeleton.ddim_step(x0, eps, t_start - skeleton.stride)
            target_x0, _ = skeleton.x0_and_eps(target(previous, t_end, states).sample, previous, t_end)
            goal = skip_end * previous + out_end * target_x0
        loss = F.mse_loss(prediction, goal)
        _optimise(optimizer, loss, student, settings.lr * _cosine(step, settings.steps))
        _update_ema(target, student, settings.target_decay)
        progress.step(step, loss.item())
        checkpoint.after(step, settings.steps)
    return student.eval()


def train(model_dir: Path, work_dir: Path, settings: DistilSettings | None = None, threads: int = 1) -> Path:
    """Distil ``model_dir``'s UNet (resuming from ``work_dir``); the student is saved in ``model_dir/unet_lcm``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    settings = settings or DistilSettings()
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(model_dir / "vae").eval()
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    scheduler = DDIMScheduler.from_pretrained(model_dir / "scheduler")

    pairings = training_pairings()
    logger.info("rendering and encoding %d training pairings", len(pairings))
    latents = encode_latents(vae, _to_tensor(render_pairings(pairings))) * vae.config.scaling_factor
    ids = _caption_ids(tokenizer, pairings)
    empty_ids = tokenizer("", padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids.flatten(0, 1)).last_hidden_state.view(*ids.shape, -1)
        empty = text_encoder(empty_ids).last_hidden_state
    alphas = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
    student = distil(unet, latents, hidden, empty, alphas, settings, work_dir)
    out = model_dir / DISTILLED_UNET
    student.save_pretrained(out)
    logger.info("saved the distilled UNet in %s", out)
    return out
