"""Ray Serve ``TextToImage`` deployment: runs a generation on its model's loop inside Triton, or its own loop.

A model with a loop model inside Triton (:attr:`ServedModel.loop <serve.models.served.ServedModel.loop>`,
``easel up --loop``; a GPU's default) draws the requests it takes there, one call per generation; the others run
on the replica's loop, one Triton call per engine per step. Each answer names its loop (``Easel-Loop``) and
``easel_generation_requests`` counts them by loop.

What a replica runs with loads in its constructor (:data:`LIBRARIES`), not with this module.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from typing import TYPE_CHECKING

import numpy as np
from ray import serve

from serve import metrics
from serve.errors import Diverged, InvalidInput
from serve.faces.identity import identity_scores
from serve.faces.pack import Faces
from serve.images.raster import encode_image
from serve.jobs.model import Progress
from serve.latent_cache import open_latent_store
from serve.models.admission import Admission, Plan
from serve.models.served import ServedModel, ServedModels
from serve.protocol.prompt_batch import run_together, steps_together
from serve.protocol.prompt_weights import plain_text
from serve.scoring import Scoring
from serve.service_engines import ServiceEngines
from serve.stores import default_url
from serve.text_to_image import approximate
from serve.text_to_image.approximate import LatentReuse
from serve.text_to_image.best_of import choose
from serve.text_to_image.drawing import Drawing
from serve.text_to_image.generation import EncodedImages, Generation, StackDefaults, StepCallback
from serve.text_to_image.images import decode_base64, decode_images, ip_references
from serve.text_to_image.loop_client import TritonLoop
from serve.text_to_image.loop_protocol import draws_in_triton
from serve.text_to_image.preview import LatentPreview, wants_preview
from serve.triton.client import TritonClient
from serve.triton.node import grpc_url_on_this_node
from serve.triton.runners import model_runner, replica_runner
from serve.triton.spec import EngineRunner

if TYPE_CHECKING:
    from serve.text_to_image.pipeline import TextToImagePipeline

logger = logging.getLogger(__name__)

LIBRARIES = ("torch", "serve.text_to_image.pipeline", "scipy.ndimage")
"""What a replica loads in its constructor, so no request waits for them: torch, diffusers (the loop) and scipy (a
ControlNet's edges). Not with this module: Serve's build of the app imports it for the class (6 s of CPU on every
stack's start when it loaded them)."""

MAX_MODELS_PER_REPLICA = 8
"""Models whose loops a replica keeps open (Ray Serve's multiplexing drops the least recently used past it)."""


class ModelPipeline:
    """One served model in a replica: its loops (over its Triton models; inside Triton), admission and previews."""

    def __init__(
        self, model: ServedModel, engines: EngineRunner, reuse: LatentReuse | None = None, triton_url: str = ""
    ) -> None:
        from serve.text_to_image.pipeline import TextToImagePipeline  # one of LIBRARIES

        self.model = model
        self.pipeline = TextToImagePipeline(model.folder, model_runner(engines, model.prefix), reuse)
        self.loop = TritonLoop(triton_url, model.loop_model) if model.loop_model else None
        self.admission = Admission.for_engines(model.folder, model.limits)
        self.preview = LatentPreview(
            self.pipeline.decode, self.pipeline.dims.latent_channels, self.pipeline.dims.vae_scale_factor
        )

    def drawer(self, jobs: list[Generation], plan: Plan) -> tuple[TritonLoop | TextToImagePipeline, str]:
        """The loop that draws ``jobs`` and its name: inside Triton where it takes them all, else the replica's."""
        if self.loop is not None and all(draws_in_triton(job, plan.tiling is not None) for job in jobs):
            return self.loop, "triton"
        return self.pipeline, "replica"


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
        service_engines: ServiceEngines | None = None,
        faces: Faces | None = None,
    ) -> None:
        """The models, Triton, the stack's defaults and store, the stack's scorer and face models.

        ``service_engines``: the scorer's among them (None: no scores); ``faces``: the face models served (a
        character's ``scores.identity``).
        """
        for library in LIBRARIES:
            importlib.import_module(library)
        import torch  # one of LIBRARIES

        torch.set_num_threads(1)
        self.models = models
        self.defaults = defaults or StackDefaults()
        self.triton = TritonClient(grpc_url_on_this_node(triton_grpc_url))
        self.engines = replica_runner(self.triton)  # one for every model: their Triton names differ
        self.scorer = (service_engines or ServiceEngines()).scoring(self.engines)
        self.faces = next(iter(faces.ready), None) if faces is not None else None
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
        return await asyncio.to_thread(ModelPipeline, served, self.engines, self.reuse, self.triton.url)

    async def _requested(self) -> ModelPipeline:
        """The loop of the model version this request was sent for (none named: the default's first)."""
        return await self.model(serve.get_multiplexed_model_id() or self.models.default.version_id)

    async def generate(
        self, drawing: Drawing, plan: Plan, sent_at: float | None = None, cache_scope: str = ""
    ) -> EncodedImages:
        """Run one admitted generation and return the encoded images (``sent_at``: when the Gateway sent it, epoch s).

        ``drawing``: the generation as the Gateway's admission built it (all but its pixels, which decode here);
        ``plan``: how the Gateway's check (:meth:`~serve.models.served.ServedModel.check`) said to run it;
        the replica checks nothing again and keeps only its slot: it waits for its turn in the replica's in-flight
        capacity. ``cache_scope``: whose kept latents the approximate cache may start it from
        (:func:`serve.cache.cache_scope`). For ``output_format`` svg the images are PNGs, for the Vectorizer.
        """
        return await self._generate(drawing, plan, sent_at, None, cache_scope)

    async def generate_stream(
        self,
        drawing: Drawing,
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

        generation = asyncio.create_task(self._generate(drawing, plan, sent_at, report, cache_scope))
        generation.add_done_callback(lambda _: steps.put_nowait(None))
        try:
            while (step := await steps.get()) is not None:
                yield step
            yield await generation
        finally:
            generation.cancel()

    async def _generate(
        self,
        drawing: Drawing,
        plan: Plan,
        sent_at: float | None,
        on_step: StepCallback | None,
        cache_scope: str,
    ) -> EncodedImages:
        metrics.observe_queue_time(metrics.TEXT_TO_IMAGE, sent_at)
        answer = drawing.answer
        served = await self._requested()
        with metrics.timed(metrics.PIPELINE_LATENCY, pipeline=metrics.TEXT_TO_IMAGE, outcome="ok"):
            async with served.admission.slot(
                plan.cost, drawing.priority, plan.queue_wait_s
            ):  # its images decode inside
                jobs = await self._jobs(drawing, plan, served, cache_scope)
                drawer, loop = served.drawer(jobs, plan)
                self._count(drawing, loop)
                reports = steps_together(on_step, len(jobs))
                pairs = zip(jobs, reports, strict=True)
                runs = [drawer.generate(job, plan.tiling, report, plan.rows_per_call) for job, report in pairs]
                try:
                    results = await run_together(runs)  # several prompts' rows merge into each step's engine calls
                except Diverged as error:  # its adapters', or the model's: said so, never a black image
                    raise error.caused_by(list(drawing.loras), served.model.name) from None
            pixels, scores, seeds, candidates = await self._ranked(drawing, results)
            encoding = (answer.raster_format, answer.output_compression)
            images = await asyncio.gather(*(asyncio.to_thread(encode_image, image, *encoding) for image in pixels))
        metrics.count(metrics.DENOISING_STEPS, drawing.sampling.steps, scheduler=drawing.sampling.scheduler)
        metrics.count(metrics.IMAGES_GENERATED, len(images), output_format=answer.output_format)
        for result in results:
            if result.steps_skipped is not None:
                metrics.count(metrics.APPROXIMATE_CACHE, result="hit" if result.steps_skipped else "miss")
                if result.steps_skipped:
                    metrics.count(metrics.STEPS_SKIPPED, result.steps_skipped)
        dropped = max(result.prompt_tokens_dropped for result in results)
        skipped = min((result.steps_skipped for result in results if result.steps_skipped is not None), default=None)
        return EncodedImages(
            list(images), drawing.seed, dropped, skipped, scores=scores, seeds=seeds, candidates=candidates, loop=loop
        )

    async def _ranked(self, drawing: Drawing, results: list) -> tuple:
        """The images answered, their scores (where asked), and with candidates their seeds and every candidate.

        With candidates, each prompt's best ``n`` of its own, best first (each candidate names its ``prompt_index``
        where there are ``prompts``). Each prompt's images are scored against that prompt.
        """
        answer = drawing.answer
        prompts = [plain_text(job.sampling.prompt) for job in drawing.jobs]
        scoring = Scoring(self.scorer, self._identity(answer.character_face))
        if answer.candidates > 1:
            chosen = [
                await choose(scoring, result.images, result.seed, prompt, answer.best_of, answer.rows_per_prompt)
                for result, prompt in zip(results, prompts, strict=True)
            ]
            candidates = [
                candidate | ({"prompt_index": index} if answer.prompted else {})
                for index, each in enumerate(chosen)
                for candidate in each.candidates
            ]
            scores = [score for each in chosen for score in each.scores] if answer.scores else None
            return (
                [image for each in chosen for image in each.images],
                scores,
                [s for c in chosen for s in c.seeds],
                candidates,
            )
        scores = None
        if answer.scores:
            scored = [await scoring.score(r.images, prompt) for r, prompt in zip(results, prompts, strict=True)]
            scores = [score for batch in scored for score in batch]
        return [image for result in results for image in result.images], scores, None, None

    def _identity(self, face: tuple[float, ...] | None):
        """Each image's ``identity`` against a character's ``face`` (None: none, or no face models here)."""
        if face is None or self.faces is None:
            return None
        reference = np.asarray(face, np.float32)
        return functools.partial(identity_scores, reference=reference, entry=self.faces, runner=self.engines)

    async def _jobs(self, drawing: Drawing, plan: Plan, served: ModelPipeline, cache_scope: str) -> list[Generation]:
        """The drawing's jobs with its images decoded (400s naming the field) for ``served``'s loop.

        Its images decode once for all its prompts. Its LoRAs are the plan's: resolved at the Gateway for the key
        it came with (their weights of that moment). What it leaves to the stack is this replica's defaults.
        """
        pipeline, adapters, sampling = served.pipeline, served.model.adapters, drawing.sampling
        if drawing.answer.candidates > 1 and pipeline.dims.inpainting:  # its zero image's encoding draws first
            raise InvalidInput(f"candidates: {served.model.name} is an inpainting model: one image only", "candidates")
        size = (sampling.width, sampling.height)
        images = await asyncio.to_thread(decode_images, drawing.sources, *size)
        ip = await asyncio.to_thread(ip_references, drawing.sources, *size, pipeline.adapters, adapters.stored_embeds)
        cutoff = self.defaults.guidance_cutoff if drawing.guidance_cutoff is None else drawing.guidance_cutoff
        decoded = {"images": images.images, "mask": images.mask, "controls": images.controls, "ip": ip}
        share, inpainting = self.defaults.approximate_cache, pipeline.dims.inpainting
        jobs = []
        for job, asked_seed in zip(drawing.jobs, drawing.asked_seeds, strict=True):
            job = job.replaced(guidance_cutoff=cutoff, loras=plan.loras, **decoded)
            reuse = approximate.decide(drawing.approximate, asked_seed is not None, job, share, inpainting)
            jobs.append(job.replaced(approximate=reuse, scope=cache_scope))
        return jobs

    @staticmethod
    def _count(drawing: Drawing, loop: str) -> None:
        """Count what it asks (its kind, ControlNets, IP-Adapters and LoRAs: the Gateway checked them) and its loop."""
        controls = drawing.sources.controlnets
        metrics.count(metrics.GENERATION_KINDS, kind=drawing.kind, controlnet="yes" if controls else "no", loop=loop)
        for control in controls:
            metrics.count(metrics.ADAPTER_REQUESTS, adapter=control.name, kind="controlnet")
        if drawing.sources.ip:
            metrics.count(metrics.ADAPTER_REQUESTS, adapter="ip_adapter", kind="ip_adapter")
        for name in drawing.loras:
            metrics.count(metrics.ADAPTER_REQUESTS, adapter=name, kind="lora")

    async def encode_reference(self, image: str) -> np.ndarray:
        """A reference image's embeddings (base64 ``image``), by the model's image encoder: ``POST /v1/references``."""
        served = await self._requested()
        pixels = await asyncio.to_thread(decode_base64, image, "image")
        return await served.pipeline.adapters.encode(served.pipeline.engines, pixels)

    async def score(self, images: list[str], prompt: str | None) -> list[dict[str, float]]:
        """Each base64 image's scores (``clip_score`` with a ``prompt``, ``aesthetic``): ``POST /v1/images/score``."""
        pixels = await asyncio.to_thread(
            lambda: [decode_base64(image, f"images.{i}") for i, image in enumerate(images)]
        )
        return await self.scorer.score(pixels, None if prompt is None else plain_text(prompt))

    async def ready(self, triton_models: list[str]) -> dict[str, bool]:
        """Readiness of each of ``triton_models`` (Triton model names)."""
        return await self.triton.models_ready(tuple(triton_models))

    async def check_health(self) -> None:
        """Ray Serve health check: the replica's event loop answers (Triton's state is /readyz's business)."""
