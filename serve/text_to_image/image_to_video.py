"""Image-to-video (Stable Video Diffusion): a still's frames denoised together, as ``StableVideoDiffusionPipeline``.

The family's declarations are :mod:`serve.text_to_image.families.svd`. Per job: the still's CLIP embedding (resized
to 224 px with diffusers' own antialiasing, normalised as the model's feature extractor says) and its VAE latents
(the still plus ``noise_aug_strength`` of the generator's noise, drawn first), then the frames' noise, then one UNet
call per step (every frame of the video in one row; negative rows of zeros when guided), guidance growing over the
frames, the folder's Euler scheduler stepping, and the temporal decoder decoding ``decode_chunk_size`` frames per call.
Every engine call goes through the job's runner, so concurrent videos of the same shape share the UNet's calls in
Triton's batcher.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve.adapters.ip_adapter import IMAGE_EMBEDS, IMAGE_ENCODER
from serve.errors import Diverged
from serve.text_to_image.families.svd import CLIP_SIDE
from serve.text_to_image.generation import Generation, GenerationResult, StepCallback, VideoConditioning
from serve.text_to_image.spec import UNET, VAE_DECODER, VAE_ENCODER
from serve.triton.spec import EngineRunner, ModelSpec

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor's defaults, where the folder's config has none
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class StillNormalisation:
    """How the still is normalised for CLIP: the feature extractor's ``image_mean`` and ``image_std``."""

    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @classmethod
    def read(cls, feature_extractor: Path) -> StillNormalisation:
        """The folder's ``preprocessor_config.json`` (CLIP's defaults where it has none)."""
        path = feature_extractor / "preprocessor_config.json"
        config = json.loads(path.read_text()) if path.is_file() else {}
        return cls(tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD)))

    def pixel_values(self, pixels: torch.Tensor) -> np.ndarray:
        """The still (1, 3, H, W) in [-1, 1] as CLIP reads it: resized with antialiasing to 224 px, normalised."""
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

        pixels = (_resize_with_antialiasing(pixels, (CLIP_SIDE, CLIP_SIDE)) + 1) / 2
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (self.mean, self.std))
        return ((pixels - mean) / std).numpy()


class ImageToVideo:
    """SVD's loop over one model's engines (``specs``), from its scheduler config and feature extractor."""

    def __init__(self, specs: dict[str, ModelSpec], normalisation: StillNormalisation) -> None:
        self.specs, self.normalisation = specs, normalisation

    async def generate(
        self,
        job: Generation,
        engines: EngineRunner,
        scheduler,
        place,
        on_step: StepCallback | None,
        turn: Callable[[], Awaitable[None]],
    ) -> GenerationResult:
        """The job's frames (``job.motion``'s count and conditioning) from its still, ``scheduler`` fresh.

        ``turn``: awaited before each step (its turn behind higher-priority generations, as a still's steps wait).
        """
        motion, sampling = job.motion, job.sampling
        video: VideoConditioning = motion.conditioning
        guided = sampling.guidance_scale > 1.0
        still = job.inputs.images[0]
        generator = torch.Generator("cpu").manual_seed(sampling.seed)
        image = torch.from_numpy(still).permute(2, 0, 1)[None].float() / 255 * 2 - 1  # (1, 3, H, W) in [-1, 1]
        clip = {"pixel_values": self.normalisation.pixel_values(image)}
        embeds = (await engines.infer(self.specs[IMAGE_ENCODER], clip))[IMAGE_EMBEDS][:, None]  # (1, 1, width)
        image = image + video.noise_aug_strength * _randn(image.shape, generator)
        latents_mode = (await engines.infer(self.specs[VAE_ENCODER], {"image": image.numpy()}))["latent_mode"]
        still_latents = torch.from_numpy(latents_mode)[:, None].repeat(1, motion.frames, 1, 1, 1)
        time_ids = np.array([[video.fps - 1, video.motion_bucket_id, video.noise_aug_strength]], dtype=np.float32)
        if guided:  # the negative row: zeros for the embedding and the still's latents
            embeds = np.concatenate([np.zeros_like(embeds), embeds])
            still_latents = torch.cat([torch.zeros_like(still_latents), still_latents])
            time_ids = np.concatenate([time_ids, time_ids])
        scheduler.set_timesteps(sampling.steps)
        timesteps = scheduler.timesteps
        shape = (1, motion.frames, self.specs[UNET].outputs[0].dims[1], *still_latents.shape[-2:])
        latents = _randn(shape, generator) * scheduler.init_noise_sigma
        guidance = torch.linspace(video.min_guidance_scale, sampling.guidance_scale, motion.frames).view(1, -1, 1, 1, 1)
        for index, t in enumerate(timesteps):
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = torch.cat([scheduler.scale_model_input(model_input, t), still_latents], dim=2)
            inputs = {
                "sample": model_input.numpy(),
                "timestep": place.timestep(t, len(model_input)),
                "encoder_hidden_states": embeds,
                "added_time_ids": time_ids,
            }
            await turn()
            noise = torch.from_numpy((await engines.infer(self.specs[UNET], inputs))["noise_pred"])
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            await place.settle(index + 1, len(timesteps), latents.transpose(1, 2), on_step)  # (1, C, F, h, w)
        await place.finish(on_step)
        frames = await self._decode(latents[0], video.decode_chunk_size or motion.frames, engines)
        images = await place.images(frames)
        if images is None:
            raise Diverged.at(0, len(timesteps))
        return GenerationResult(images, sampling.seed, 0)

    async def _decode(self, latents: torch.Tensor, chunk: int, engines: EngineRunner) -> np.ndarray:
        """The frames (F, 3, H, W) of ``latents`` (F, C, h, w): ``chunk`` frames per call, decoded together."""
        parts = [await self.decode(latents[i : i + chunk].numpy(), engines) for i in range(0, len(latents), chunk)]
        return np.concatenate(parts)

    async def decode(self, latents: np.ndarray, engines: EngineRunner) -> np.ndarray:
        """``latents`` (N, C, h, w) decoded together as one row of frames by the temporal decoder: (N, 3, H, W)."""
        return (await engines.infer(self.specs[VAE_DECODER], {"latent": latents[None]}))["image"][0]


def _randn(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Diffusers' ``randn_tensor`` on the CPU."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, dtype=torch.float32)
