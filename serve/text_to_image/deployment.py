"""Ray Serve ``TextToImage`` deployment: runs the denoising loop, sending each UNet step to Triton."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import torch
from ray import serve

from serve import metrics
from serve.errors import Diverged, InvalidInput
from serve.images.raster import encode_image
from serve.latent_cache import open_latent_store
from serve.stores import default_url
from serve.text_to_image import approximate
from serve.text_to_image.admission import Admission, Plan
from serve.text_to_image.approximate import LatentReuse
from serve.text_to_image.best_of import candidate_seeds, check_best_of, choose
from serve.text_to_image.generation import (
    AdapterInputs,
    CachePolicy,
    EncodedImages,
    Generation,
    ImageInputs,
    IpReferences,
    Progress,
    SamplingParams,
    StackDefaults,
    StepCallback,
    draw_seed,
)
from serve.text_to_image.images import RequestImages, decode_base64, decode_images, ip_references
from serve.text_to_image.ip_scale import ip_choices
from serve.text_to_image.models import ServedModel, ServedModels
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.preview import LatentPreview, wants_preview
from serve.text_to_image.prompt_batch import run_together, steps_together
from serve.text_to_image.prompt_weights import plain_text
from serve.text_to_image.schema import GenerationRequest
from serve.text_to_image.scores import Scorer, check_scores
from serve.text_to_image.video import motion_of
from serve.triton.client import TritonClient
from serve.triton.node import grpc_url_on_this_node
from serve.triton.runners import model_runner, replica_runner
from serve.triton.spec import EngineRunner

logger = logging.getLogger(__name__)


def to_generation(
    request: GenerationRequest,
    native_size: int,
    ip: tuple[IpReferences, ...] = (),
    images: RequestImages | None = None,
    defaults: StackDefaults | None = None,
) -> Generation:
    """The pipeline job for an API request (a missing seed drawn here, what it leaves unset from ``defaults``).

    ``ip``: its IP-Adapters' references, decoded; ``images``: its decoded input images, mask and control images,
    with the output's size. Best-of-n's candidates are rows of the job, each with its own seed.
    """
    images = images or RequestImages(*request.width_height(native_size))
    defaults = defaults or StackDefaults()
    seed = draw_seed(request.seed)
    sampling = SamplingParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        n=request.drawn_rows,
        width=images.width,
        height=images.height,
        steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        seed=seed,
        scheduler=request.scheduler,
        guidance_cutoff=defaults.guidance_cutoff if request.guidance_cutoff is None else request.guidance_cutoff,
        seeds=candidate_seeds(seed, request.drawn_rows) if request.candidates > 1 else (),
    )
    return Generation(
        sampling=sampling,
        priority=request.priority,
        inputs=ImageInputs(images.images, images.mask, request.effective_strength, images.controls),
        adapters=AdapterInputs(loras=tuple((lora.name, lora.scale) for lora in request.loras), ip=ip),
        cache=CachePolicy(interval=request.cache_interval),
        motion=motion_of(request),
    )


def generation_kind(request: GenerationRequest) -> str:
    """What a request asks (the metrics' ``kind``): text, img2img, inpaint or outpaint."""
    if request.outpaint is not None:
        return "outpaint"
    if request.mask is not None:
        return "inpaint"
    return "img2img" if request.image else "text"


MAX_MODELS_PER_REPLICA = 8
"""Models whose loops a replica keeps open (Ray Serve's multiplexing drops the least recently used past it)."""


class ModelPipeline:
    """One served model in a replica: its loop over its Triton models, its admission and its previews."""

    def __init__(self, model: ServedModel, engines: EngineRunner, reuse: LatentReuse | None = None) -> None:
        self.model = model
        self.pipeline = TextToImagePipeline(model.folder, model_runner(engines, model.prefix), reuse)
        self.admission = Admission.for_engines(model.folder, model.limits)
        self.preview = LatentPreview(
            self.pipeline.decode, self.pipeline.dims.latent_channels, self.pipeline.dims.vae_scale_factor
        )


@serve.deployment(name="TextToImage")
class TextToImage:
    """Many generations in flight per replica: Triton calls are awaited (and merged), CPU work runs in threads.

    A request's model is its multiplexed model id (``handle.options(multiplexed_model_id=NAME)``, set by the
    Gateway): Ray Serve routes a model's requests to the replicas that have its loop open, so its steps merge.
    """

    def __init__(
        self,
        models: ServedModels,
        triton_grpc_url: str,
        defaults: StackDefaults | None = None,
        store_url: str | None = None,
        scorer_dir: str | None = None,
    ) -> None:
        """``scorer_dir``: the scorer's engine folder (``AppArgs.scorer_dir``; None: no scores)."""
        torch.set_num_threads(1)
        self.models = models
        self.defaults = defaults or StackDefaults()
        self.triton = TritonClient(grpc_url_on_this_node(triton_grpc_url))
        self.engines = replica_runner(self.triton)  # one for every model: their Triton names differ
        self.scorer = Scorer(self.engines, Path(scorer_dir)) if scorer_dir else None
        self.reuse = None  # the stack's approximate cache, in its store (keyed by each model's engine folder)
        if self.defaults.approximate_cache > 0:
            store = open_latent_store(store_url or default_url())
            self.reuse = LatentReuse(store, self.defaults.approximate_cache, self.defaults.approximate_similarity)

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def model(self, version_id: str) -> ModelPipeline:
        """A model version's loop in this replica (opened on its first request: tokenizers, scheduler, admission).

        Keyed by version, so a replaced model's new requests never run on the old version's loop.
        """
        self.models = self.models.refreshed()
        served = self.models.version(version_id)
        logger.info("opening model %s version %d (%s)", served.name, served.version, served.folder.path)
        return await asyncio.to_thread(ModelPipeline, served, self.engines, self.reuse)

    async def _requested(self) -> ModelPipeline:
        """The loop of the model version this request was sent for (none named: the default's first)."""
        return await self.model(serve.get_multiplexed_model_id() or self.models.default.version_id)

    async def generate(
        self, request: GenerationRequest, plan: Plan, sent_at: float | None = None, cache_scope: str = ""
    ) -> EncodedImages:
        """Run one API request and return the encoded images (``sent_at``: when the Gateway sent it, epoch s).

        ``plan``: how the Gateway's check (:meth:`~serve.text_to_image.models.ServedModel.check`) said to run it;
        the replica checks nothing again and keeps only its slot: it waits for its turn in the replica's in-flight
        capacity. ``cache_scope``: whose kept latents the approximate cache may start it from
        (:func:`serve.cache.cache_scope`). For ``output_format`` svg the images are PNGs, for the Vectorizer.
        """
        return await self._generate(request, plan, sent_at, None, cache_scope)

    async def generate_stream(
        self,
        request: GenerationRequest,
        plan: Plan,
        sent_at: float | None = None,
        previews: bool = False,
        cache_scope: str = "",
    ):
        """:meth:`generate` streamed (``handle.options(stream=True)``): a :class:`Progress` per step, then the images.

        ``previews``: every few steps (and the last) carries a preview of the first image. A caller that stops
        reading (its client went away, its job was canceled) cancels the generation at the step it is in.
        """
        steps: asyncio.Queue[Progress | None] = asyncio.Queue()
        served = await self._requested()

        async def report(step: int, total: int, latents: np.ndarray) -> None:
            preview = await served.preview.png(latents) if previews and wants_preview(step, total) else None
            steps.put_nowait(Progress(step, total, preview))

        generation = asyncio.create_task(self._generate(request, plan, sent_at, report, cache_scope))
        generation.add_done_callback(lambda _: steps.put_nowait(None))
        try:
            while (step := await steps.get()) is not None:
                yield step
            yield await generation
        finally:
            generation.cancel()

    async def _generate(
        self,
        request: GenerationRequest,
        plan: Plan,
        sent_at: float | None,
        on_step: StepCallback | None,
        cache_scope: str,
    ) -> EncodedImages:
        metrics.observe_queue_time(metrics.TEXT_TO_IMAGE, sent_at)
        check_scores(["clip_score"] if request.scores else [], self.scorer, "scores")
        check_best_of(request.candidates, request.best_of, self.scorer)
        served = await self._requested()
        pipeline, admission = served.pipeline, served.admission
        metrics.count(
            metrics.GENERATION_KINDS, kind=generation_kind(request), controlnet="yes" if request.controlnets else "no"
        )
        for control in request.controlnets:
            metrics.count(metrics.ADAPTER_REQUESTS, adapter=control.name, kind="controlnet")
        self._count_adapters(request)
        with metrics.timed(metrics.PIPELINE_LATENCY, pipeline=metrics.TEXT_TO_IMAGE, outcome="ok"):
            async with admission.slot(
                plan.cost, request.priority, plan.queue_wait_s
            ):  # the images decode inside: their memory too
                base = draw_seed(request.seed) if request.prompts else None  # prompt i's: its own, or base + i
                singles = [request] if base is None else request.singles(base)
                jobs = [await self._job(single, plan, served, cache_scope) for single in singles]
                reports = steps_together(on_step, len(jobs))
                pairs = zip(jobs, reports, strict=True)
                runs = [pipeline.generate(job, plan.tiling, report, plan.rows_per_call) for job, report in pairs]
                try:
                    results = await run_together(runs)  # several prompts' rows merge into each step's engine calls
                except Diverged as error:  # its adapters', or the model's: said so, never a black image
                    raise error.caused_by([lora.name for lora in request.loras], served.model.name) from None
            pixels, scores, seeds, candidates = await self._ranked(request, singles, results)
            images = await asyncio.gather(
                *(
                    asyncio.to_thread(encode_image, image, request.raster_format, request.output_compression)
                    for image in pixels
                )
            )
        metrics.count(metrics.DENOISING_STEPS, request.num_inference_steps, scheduler=request.scheduler)
        metrics.count(metrics.IMAGES_GENERATED, len(images), output_format=request.output_format)
        for result in results:
            if result.steps_skipped is not None:
                metrics.count(metrics.APPROXIMATE_CACHE, result="hit" if result.steps_skipped else "miss")
                if result.steps_skipped:
                    metrics.count(metrics.STEPS_SKIPPED, result.steps_skipped)
        dropped = max(result.prompt_tokens_dropped for result in results)
        skipped = min((result.steps_skipped for result in results if result.steps_skipped is not None), default=None)
        seed = results[0].seed if base is None else base
        return EncodedImages(list(images), seed, dropped, skipped, scores=scores, seeds=seeds, candidates=candidates)

    async def _ranked(self, request: GenerationRequest, singles: list, results: list) -> tuple:
        """The images answered, their scores (where asked), and with candidates their seeds and every candidate.

        With candidates, each prompt's best ``n`` of its own, best first (each candidate names its ``prompt_index``
        where there are ``prompts``). Each prompt's images are scored against that prompt.
        """
        prompts = [plain_text(single.prompt) for single in singles]
        if request.candidates > 1:
            chosen = [
                await choose(self.scorer, result.images, result.seed, prompt, request.best_of, single.rows)
                for single, result, prompt in zip(singles, results, prompts, strict=True)
            ]
            candidates = [
                candidate | ({"prompt_index": index} if request.prompts is not None else {})
                for index, each in enumerate(chosen)
                for candidate in each.candidates
            ]
            scores = [score for each in chosen for score in each.scores] if request.scores else None
            return (
                [image for each in chosen for image in each.images],
                scores,
                [s for c in chosen for s in c.seeds],
                candidates,
            )
        scores = None
        if request.scores:
            scored = [await self.scorer.score(r.images, prompt) for r, prompt in zip(results, prompts, strict=True)]
            scores = [score for batch in scored for score in batch]
        return [image for result in results for image in result.images], scores, None, None

    async def _job(self, request: GenerationRequest, plan: Plan, served: ModelPipeline, cache_scope: str) -> Generation:
        """The request's images decoded and its job checked (400s naming the field) for ``served``'s loop.

        Its LoRAs are the plan's: resolved at the Gateway for the key it came with (their weights of that moment).
        """
        pipeline, adapters = served.pipeline, served.model.adapters
        if request.candidates > 1 and pipeline.dims.inpainting:  # its zero image's encoding draws before the noise
            raise InvalidInput(f"candidates: {served.model.name} is an inpainting model: one image only", "candidates")
        images = await asyncio.to_thread(decode_images, request, pipeline.dims.native_size)
        size = (images.width, images.height)
        ip = await asyncio.to_thread(ip_references, request, *size, pipeline.adapters, adapters.stored_embeds)
        job = to_generation(request, pipeline.dims.native_size, ip, images, self.defaults)
        job = job.replaced(loras=plan.loras)
        reuse = approximate.decide(
            request.approximate_cache,
            request.seed is not None,
            job,
            self.defaults.approximate_cache,
            pipeline.dims.inpainting,
        )
        return job.replaced(approximate=reuse, scope=cache_scope)

    @staticmethod
    def _count_adapters(request: GenerationRequest) -> None:
        """Count the request's adapters (the Gateway checked them)."""
        if ip_choices(request):
            metrics.count(metrics.ADAPTER_REQUESTS, adapter="ip_adapter", kind="ip_adapter")
        for lora in request.loras:
            metrics.count(metrics.ADAPTER_REQUESTS, adapter=lora.name, kind="lora")

    async def encode_reference(self, image: str) -> np.ndarray:
        """A reference image's embeddings (base64 ``image``), by the model's image encoder: ``POST /v1/references``."""
        served = await self._requested()
        pixels = await asyncio.to_thread(decode_base64, image, "image")
        return await served.pipeline.adapters.encode(served.pipeline.engines, pixels)

    async def score(self, images: list[str], prompt: str | None) -> list[dict[str, float]]:
        """Each base64 image's scores (``clip_score`` with a ``prompt``, ``aesthetic``): ``POST /v1/images/score``."""
        check_scores(["clip_score"], self.scorer, "images")
        pixels = await asyncio.to_thread(
            lambda: [decode_base64(image, f"images.{i}") for i, image in enumerate(images)]
        )
        return await self.scorer.score(pixels, None if prompt is None else plain_text(prompt))

    async def ready(self, triton_models: list[str]) -> dict[str, bool]:
        """Readiness of each of ``triton_models`` (Triton model names)."""
        return await self.triton.models_ready(tuple(triton_models))

    async def check_health(self) -> None:
        """Ray Serve health check: the replica's event loop answers (Triton's state is /readyz's business)."""
