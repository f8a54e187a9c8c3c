"""Images into the loop: img2img's and inpainting's starting latents, an inpainting UNet's inputs, latent blending.

Each case follows the diffusers pipeline it matches, step for step and draw for draw from the generator:

- **text only**: pure noise (``StableDiffusionPipeline``); an inpainting UNet gets a mask of ones over a blank image,
  which is ``StableDiffusionInpaintPipeline`` with a white mask at strength 1.
- **img2img** (``StableDiffusionImg2ImgPipeline``): the images' latents, sampled from the ``vae_encoder`` engine's
  distribution, noised to the first timestep ``strength`` leaves.
- **image-to-video** (``AnimateDiffVideoToVideoPipeline`` given the image repeated as every frame): the image
  encoded once; each frame's latent its own sample of that distribution, noised as img2img's.
- **inpainting** (``StableDiffusionInpaintPipeline``): noise (strength 1) or the noised image latents; a 9-channel
  UNet also takes the mask and the masked image's latents each step; a 4-channel UNet's latents are blended with
  the image's (noised to the next timestep) outside the mask after each step.

The SDXL pipelines do the same. The masked image is encoded only for a 9-channel UNet (diffusers also encodes it for
a 4-channel one, drawing from the generator after the noise; no scheduler Easel serves draws after that).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own alias
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from serve.text_to_image.generation import Generation
from serve.text_to_image.spec import VAE_ENCODER
from serve.triton.spec import EngineRunner, ModelSpec


class ImageProcessors:
    """diffusers' preprocessing of a pipeline's input images, its masks and its control images."""

    def __init__(self, vae_scale_factor: int) -> None:
        self.image = VaeImageProcessor(vae_scale_factor=vae_scale_factor)
        self.mask = VaeImageProcessor(
            vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )
        self.control = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True, do_normalize=False)

    def images(self, job: Generation) -> torch.Tensor:
        """The job's images in ``[-1, 1]`` at its size, NCHW."""
        pictures = [Image.fromarray(image) for image in job.inputs.images]
        return self.image.preprocess(pictures, height=job.sampling.height, width=job.sampling.width).to(torch.float32)

    def mask_of(self, job: Generation) -> torch.Tensor:
        """The job's mask, binarised (1: repaint), N1HW; all ones when it has none."""
        if job.inputs.mask is None:
            return torch.ones(1, 1, job.sampling.height, job.sampling.width)
        return self.mask.preprocess(
            Image.fromarray(job.inputs.mask), height=job.sampling.height, width=job.sampling.width
        )

    def controls(self, job: Generation) -> list[torch.Tensor]:
        """Each control image in ``[0, 1]`` at the job's size, one row each."""
        return [
            self.control.preprocess(Image.fromarray(c.image), height=job.sampling.height, width=job.sampling.width).to(
                torch.float32
            )
            for c in job.inputs.controls
        ]


@dataclass
class ImageStart:
    """A generation's starting latents, and what its image input adds to each step."""

    latents: torch.Tensor
    noise: torch.Tensor | None = None
    image_latents: torch.Tensor | None = None  # a 4-channel UNet's blending: the image, re-noised each step
    mask: torch.Tensor | None = None  # the latents' mask, one row per image (1: repaint)
    unet_extra: torch.Tensor | None = None  # a 9-channel UNet's mask and masked image latents, per UNet row

    def unet_sample(self, model_input: torch.Tensor) -> torch.Tensor:
        """The UNet's ``sample``: the scaled latents, with an inpainting UNet's mask and masked image latents."""
        if self.unet_extra is not None:
            model_input = torch.cat([model_input, self.unet_extra], dim=1)
        return model_input

    def unguided(self) -> ImageStart:
        """This start for unguided steps: an inpainting UNet's extra inputs for the prompt's rows only."""
        if self.unet_extra is None:
            return self
        return dataclasses.replace(self, unet_extra=self.unet_extra[len(self.unet_extra) // 2 :])

    def after_step(self, latents: torch.Tensor, index: int, timesteps: torch.Tensor, scheduler) -> torch.Tensor:
        """A 4-channel UNet's inpainting: the image outside the mask, noised to the next timestep (as diffusers)."""
        if self.image_latents is None:
            return latents
        proper = self.image_latents
        if index < len(timesteps) - 1:
            proper = scheduler.add_noise(proper, self.noise, torch.tensor([timesteps[index + 1]]))
        return (1 - self.mask) * proper + self.mask * latents


def strength_timesteps(scheduler, steps: int, strength: float) -> torch.Tensor:
    """The timesteps that run for ``strength`` (all of them at 1), as the img2img pipelines' ``get_timesteps``.

    ``scheduler``'s timesteps are set (for ``steps``) by the model's family.
    """
    start = steps - min(int(steps * strength), steps)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    return scheduler.timesteps[start * scheduler.order :]


async def encode(
    engines: EngineRunner, spec: ModelSpec, pixels: torch.Tensor, generator: torch.Generator, samples: int = 0
) -> torch.Tensor:
    """Latents sampled from the VAE encoder's distribution of ``pixels``, as ``latent_dist.sample(generator)``.

    ``samples``: that many draws from one image's distribution (a video's frames: the image encoded once, as
    diffusers' encoder sampling the image repeated that many times in one batch); 0: one per image.
    """
    out = await engines.infer(spec, {"image": pixels.numpy()})
    mean, std = torch.from_numpy(out["latent_mean"]), torch.from_numpy(out["latent_std"])
    shape = (samples, *mean.shape[1:]) if samples else mean.shape
    return mean + std * randn_tensor(shape, generator=generator, dtype=mean.dtype)


async def video_start(
    job: Generation, engines: EngineRunner, encoder: ModelSpec, pixels: torch.Tensor, scheduler, timesteps, generator
) -> ImageStart:
    """Image-to-video: every frame starts from the image's noised latent (``AnimateDiffVideoToVideoPipeline``'s).

    Latents (1, C, F, h, w): the frames' samples of the image's distribution (one encoder call), noised to the first
    timestep ``strength`` leaves, drawn in diffusers' order (frame-major) and laid out as its ``permute``.
    """
    frames = await encode(engines, encoder, pixels, generator, job.motion.frames)
    if len(timesteps):
        noise = randn_tensor(frames.shape, generator=generator, dtype=torch.float32)
        frames = scheduler.add_noise(frames[None], noise[None], timesteps[:1])[0]
    return ImageStart(frames.permute(1, 0, 2, 3)[None].contiguous())


def _noise_start(noise: torch.Tensor, scheduler) -> torch.Tensor:
    """Pure noise as the first latents: scaled by the scheduler's ``init_noise_sigma`` (flow matching has none)."""
    return noise * getattr(scheduler, "init_noise_sigma", 1.0)


def _rows(latents: torch.Tensor, n: int) -> torch.Tensor:
    """The images' latents for ``n`` rows: all images, again and again (diffusers' layout of a batch of images)."""
    return latents.repeat(n // latents.shape[0], 1, 1, 1)


async def start(
    job: Generation,
    engines: EngineRunner,
    specs,
    processors: ImageProcessors,
    scheduler,
    timesteps: torch.Tensor,
    generator: torch.Generator,
    shape: tuple[int, ...],
    inpainting_unet: bool,
    guided: bool,
) -> ImageStart:
    """The job's starting latents (and per-step parts), drawing from ``generator`` as diffusers' pipelines do."""
    if not job.inputs.images and not inpainting_unet:
        return ImageStart(_noise_start(randn_tensor(shape, generator=generator, dtype=torch.float32), scheduler))
    encoder = specs[VAE_ENCODER]
    pixels = processors.images(job) if job.inputs.images else torch.zeros(1, 3, job.sampling.height, job.sampling.width)
    if job.motion is not None:
        return await video_start(job, engines, encoder, pixels, scheduler, timesteps, generator)
    if not len(timesteps):  # a strength too small for one step: the images through the VAE
        return ImageStart(_rows(await encode(engines, encoder, pixels, generator), job.sampling.n))
    latent_timestep = timesteps[:1].repeat(job.sampling.n)
    if job.inputs.mask is None and not inpainting_unet:  # img2img
        image_latents = _rows(await encode(engines, encoder, pixels, generator), job.sampling.n)
        noise = randn_tensor(image_latents.shape, generator=generator, dtype=torch.float32)
        return ImageStart(scheduler.add_noise(image_latents, noise, latent_timestep))
    blend = not inpainting_unet
    full = job.inputs.strength == 1.0
    image_latents = None
    if blend or not full:
        image_latents = _rows(await encode(engines, encoder, pixels, generator), job.sampling.n)
    noise = randn_tensor(shape, generator=generator, dtype=torch.float32)
    latents = _noise_start(noise, scheduler) if full else scheduler.add_noise(image_latents, noise, latent_timestep)
    mask = processors.mask_of(job)
    latent_mask = _rows(F.interpolate(mask, size=shape[2:]), job.sampling.n)
    if blend:
        return ImageStart(latents, noise, image_latents, latent_mask)
    masked = _rows(await encode(engines, encoder, pixels * (mask < 0.5), generator), job.sampling.n)
    extra = torch.cat([latent_mask, masked], dim=1)
    return ImageStart(latents, noise, unet_extra=torch.cat([extra] * 2) if guided else extra)
