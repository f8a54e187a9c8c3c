"""Guided denoising over engines called one step at a time, matching diffusers' pipelines.

One loop serves every model family: the family (``families/``) turns the prompts into its denoiser's per-row
conditioning, names the denoiser engine, its samplers and their timesteps, and says whether guidance is
classifier-free; the loop sends the conditioning with each step's latents (NCHW: a family whose denoiser works on
another layout, Flux's packed patches, packs them inside its engine). Input images (img2img, inpainting) set the
starting latents and what each step adds (:mod:`serve.text_to_image.image_to_image`); ControlNets add their residuals
to each UNet call (:mod:`serve.text_to_image.controlnet`); a text-only request takes neither path, and may start
from a similar earlier prompt's kept latents some steps in (:mod:`serve.text_to_image.approximate`). An
image-to-video model (SVD) runs its own loop (:mod:`serve.text_to_image.image_to_video`). The engines are
reached through an :class:`~serve.triton.spec.EngineRunner`: Triton in the served stack (a job's chain of runners
built by :func:`serve.triton.runners.job_runner`), ONNX Runtime in-process (:mod:`serve.text_to_image.onnx_runner`)
for benchmarks and unit tests, PyTorch to measure the loop on a GPU without Triton (the benchmarks'
:mod:`loadtests.benchmarks.torch_runner`). Each generation owns its scheduler, so concurrent requests never share
state.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Mapping

import numpy as np
import torch

from serve.adapters.requests import GenerationAdapters
from serve.errors import Diverged
from serve.priority import PriorityGate
from serve.text_to_image import guidance, image_to_image
from serve.text_to_image.approximate import LatentReuse, Start
from serve.text_to_image.controlnet import JobControls
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Generation, GenerationResult, StepCallback
from serve.text_to_image.image_to_image import ImageProcessors, strength_timesteps
from serve.text_to_image.image_to_video import ImageToVideo, StillNormalisation
from serve.text_to_image.resident import place_for
from serve.text_to_image.spec import VAE_DECODER
from serve.text_to_image.step_cache import JobStepCache
from serve.text_to_image.tiling import VaeTiling
from serve.triton.runners import job_runner
from serve.triton.spec import EngineRunner

logger = logging.getLogger(__name__)


class TextToImagePipeline:
    """Family, tokenizers, scheduler config and engine specs of one built model; :meth:`generate` runs a job."""

    def __init__(
        self, folder: EngineFolder, engines: EngineRunner, reuse: LatentReuse | None = None, device: str | None = None
    ) -> None:
        """``device``: the GPU the engines run on in this process (the loop inside Triton), where its tensors stay."""
        self.family = folder.family
        self.model = folder.key
        self.dims = self.family.dims
        self.specs = self.family.specs
        self.tokenizers = folder.tokenizers()
        self.scheduler_config = folder.scheduler_config()
        self.tiling = folder.tiling
        self.engines = engines
        self.adapters = GenerationAdapters(folder.adapters, self.specs, folder.unet_config(), folder.feature_extractor)
        self.processors = ImageProcessors(self.dims.vae_scale_factor)
        self.gate = PriorityGate()
        self.reuse = reuse  # the stack's approximate cache (serve.text_to_image.approximate), if it keeps latents
        self.place = lambda: place_for(device)  # where a generation's tensors live between engine calls
        self.animation = (  # an image-to-video model's own loop (SVD)
            ImageToVideo(self.specs, StillNormalisation.read(folder.feature_extractor))
            if self.family.animates_images
            else None
        )

    def make_scheduler(self, name: str):
        """A fresh scheduler for sampler ``name`` (one of the family's) built from the model's scheduler config."""
        return self.family.samplers[name].build(self.scheduler_config)

    async def generate(
        self,
        job: Generation,
        tiling: VaeTiling | None = None,
        on_step: StepCallback | None = None,
        rows_per_call: Mapping[str, int] | None = None,
    ) -> GenerationResult:
        """Denoise ``job`` with one denoiser call per step and decode the latents to images (in ``tiling``'s tiles).

        Every engine call goes at the job's priority, and each step waits its turn behind higher-priority
        generations in flight (:class:`PriorityGate`). ``rows_per_call`` caps an engine's rows per call (a large
        request's step then goes as several calls in turn, so others' calls run between them).
        """
        engines = job_runner(self.engines, job.priority, rows_per_call, self.adapters.row(job))
        async with self.gate.active(job.priority):
            if self.animation is not None:
                scheduler = self.make_scheduler(job.sampling.scheduler)
                turn = functools.partial(self.gate.turn, job.priority)
                return await self.animation.generate(job, engines, scheduler, self.place(), on_step, turn)
            return await self._generate(job, engines, tiling, on_step)

    async def _generate(
        self, job: Generation, engines: EngineRunner, tiling: VaeTiling | None, on_step: StepCallback | None
    ) -> GenerationResult:
        step_engine = self.family.step_engine(job.outline)
        place = self.place()
        guided = self.family.classifier_free(job)
        conditioning, dropped = await self.family.condition(engines, self.tokenizers, job, guided)
        conditioning |= await self.adapters.ip_rows(engines, job, guided, self._latent_shape(job)[-2:])
        # Rows [negative..., prompt...], each repeated per image, as diffusers lays them out.
        unrepeated = conditioning
        conditioning = {
            name: await place.put(np.repeat(rows, job.sampling.n, axis=0)) for name, rows in unrepeated.items()
        }
        scheduler = self.make_scheduler(job.sampling.scheduler)
        self.family.set_timesteps(scheduler, job)
        timesteps = strength_timesteps(scheduler, job.sampling.steps, job.inputs.strength if job.inputs.images else 1.0)
        generator = _generator(job.sampling.seed, job.sampling.seeds)
        shape, inpainting = self._latent_shape(job), self.dims.inpainting
        start = await image_to_image.start(
            job, engines, self.specs, self.processors, scheduler, timesteps, generator, shape, inpainting, guided
        )
        control_images = await asyncio.to_thread(self.processors.controls, job) if job.inputs.controls else []
        controls = JobControls(self.specs, job, control_images, guided, step_engine)
        reused = await self._reused(job, unrepeated, scheduler, len(timesteps))  # before the rows are repeated
        first = reused.skipped if reused is not None else 0
        latents = start.latents if reused is None or reused.latents is None else torch.from_numpy(reused.latents)
        latents = await place.put(latents)
        step_kwargs = _step_kwargs(scheduler, generator)
        guided_steps = guidance.guided_steps(len(timesteps), job.sampling.guidance_cutoff) if guided else 0
        denoiser = JobStepCache(self.specs, step_engine, job.cache.interval)
        for index, t in enumerate(timesteps[first:], start=first):
            if guided and index >= guided_steps:  # adaptive guidance: the prompt's rows alone from here
                guided, conditioning, start = False, guidance.prompt_rows(conditioning), start.unguided()
                controls = JobControls(self.specs, job, control_images, guided, step_engine)
            model_input = torch.cat([latents] * 2) if guided else latents
            if hasattr(scheduler, "scale_model_input"):
                model_input = scheduler.scale_model_input(model_input, t)
            timestep = place.timestep(t, len(model_input))
            inputs = {"sample": place.engine_input(start.unet_sample(model_input)), "timestep": timestep}
            inputs |= conditioning
            await self.gate.turn(job.priority)
            inputs |= await controls.residuals(
                engines, index, len(timesteps), place.engine_input(model_input), timestep, conditioning
            )
            noise = place.tensor(await denoiser.noise(engines, index - first, inputs))
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + job.sampling.guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            latents = start.after_step(latents, index, timesteps, scheduler)
            await place.settle(index + 1, len(timesteps), latents, on_step)  # never a black image: NaN is refused
            if reused is not None and not first and index + 1 == reused.step:
                await self.reuse.keep(reused, latents.numpy())
        await place.finish(on_step)
        pixels = await self._decode(place.engine_input(latents), tiling, engines)
        images = await place.images(pixels)
        if images is None:
            raise Diverged.at(0, len(timesteps))
        return GenerationResult(images, job.sampling.seed, dropped, None if reused is None else reused.skipped)

    def _latent_shape(self, job: Generation) -> tuple[int, ...]:
        """The shape of ``job``'s latents: its images, the latent channels, (a video's frames,) its latent size."""
        scale = self.dims.vae_scale_factor
        frames = (job.motion.frames,) if job.motion else ()
        return (
            job.sampling.n,
            self.dims.latent_channels,
            *frames,
            job.sampling.height // scale,
            job.sampling.width // scale,
        )

    async def _reused(self, job: Generation, rows: dict, scheduler, steps: int) -> Start | None:
        """The approximate cache's start for ``job`` (None when it is not asked or the stack has none).

        ``rows``: its conditioning, not yet repeated per image. A start some steps in moves ``scheduler``'s own step
        count (sigmas, noise, last step) there too.
        """
        if not job.cache.approximate or self.reuse is None:
            return None
        reused = await self.reuse.start(self.model, job, rows, steps)
        if reused.skipped and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index((scheduler.begin_index or 0) + reused.skipped * scheduler.order)
        return reused

    async def _decode(self, latents: np.ndarray, tiling: VaeTiling | None, engines: EngineRunner) -> np.ndarray:
        """A still's images, or a video's frames (its latents (1, C, F, H, W) decoded a few frames per call)."""
        if latents.ndim == 4:
            return await self.decode(latents, tiling, engines)
        frames = latents.transpose(0, 2, 1, 3, 4).reshape(-1, *latents.shape[1:2], *latents.shape[3:])
        chunk = self.specs[VAE_DECODER].max_batch_size
        parts = [await self.decode(frames[i : i + chunk], tiling, engines) for i in range(0, len(frames), chunk)]
        return np.concatenate(parts)

    async def decode(
        self, latents: np.ndarray, tiling: VaeTiling | None = None, engines: EngineRunner | None = None
    ) -> np.ndarray:
        """The VAE decoder's images (NCHW, not yet clamped) for ``latents``, whole or in ``tiling``'s tiles."""
        engines = engines or self.engines

        async def run(part: np.ndarray) -> np.ndarray:
            if self.animation is not None:  # a temporal decoder: the latents are one row of frames
                return await self.animation.decode(part, engines)
            return (await engines.infer(self.specs[VAE_DECODER], {"latent": part}))["image"]

        if tiling is not None and tiling.applies(*latents.shape[2:]):
            return await tiling.decode(latents, run)
        return await run(latents)


def _generator(seed: int, seeds: tuple[int, ...]) -> torch.Generator | list[torch.Generator]:
    """The job's generator, or one per row of ``seeds`` (diffusers' ``randn_tensor`` draws row ``i`` from the ith)."""
    if seeds:
        return [torch.Generator("cpu").manual_seed(each) for each in seeds]
    return torch.Generator("cpu").manual_seed(seed)


def _step_kwargs(scheduler, generator: torch.Generator | list[torch.Generator]) -> dict:
    """The extra ``step`` arguments diffusers passes: eta=0 where accepted, and the generator."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {"eta": 0.0} if "eta" in accepted else {}
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
