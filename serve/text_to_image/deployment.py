"""Ray Serve ``TextToImage`` deployment: runs the denoising loop, sending each UNet step to Triton."""

from __future__ import annotations

import asyncio
import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ray import serve

from serve import metrics
from serve.errors import NotReady
from serve.text_to_image.admission import Admission, Limits, engine_budgets, memory_models
from serve.text_to_image.pipeline import Generation, TextToImagePipeline
from serve.text_to_image.schema import GenerationRequest
from serve.triton.client import TritonClient
from serve.triton.coalesce import CoalescingRunner

logger = logging.getLogger(__name__)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class EncodedImages:
    """Encoded images and what the response should say about them."""

    images: list[bytes]
    seed: int
    prompt_tokens_dropped: int


def encode_image(pixels: np.ndarray, output_format: str) -> bytes:
    """Encode an HWC uint8 image as png, jpeg or webp."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=_PIL_FORMATS[output_format])
    return buffer.getvalue()


def to_generation(request: GenerationRequest, native_size: int) -> Generation:
    """The pipeline job for an API request; a missing seed is drawn here so the response can report it."""
    width, height = request.width_height(native_size)
    seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**31)
    return Generation(
        request.prompt,
        request.negative_prompt,
        request.n,
        width,
        height,
        request.num_inference_steps,
        request.guidance_scale,
        seed,
        request.scheduler,
    )


@serve.deployment(name="TextToImage")
class TextToImage:
    """Many generations in flight per replica: Triton calls are awaited (and merged), CPU work runs in threads."""

    def __init__(self, engine_dir: str, triton_grpc_url: str, limits: Limits) -> None:
        torch.set_num_threads(1)
        self.triton = TritonClient(triton_grpc_url)
        self.pipeline = TextToImagePipeline(Path(engine_dir), CoalescingRunner(self.triton))
        models = memory_models(Path(engine_dir), self.pipeline.specs)
        budgets = engine_budgets(models, self.pipeline.specs, limits.memory_budget_bytes)
        self.admission = Admission(models, budgets, limits, self.pipeline.tiling)

    async def generate(self, request: GenerationRequest, sent_at: float | None = None) -> EncodedImages:
        """Run one API request and return the encoded images (``sent_at``: when the Gateway sent it, epoch s).

        Refused (400) when it cannot fit the memory budget or is over the cost ceiling; otherwise it waits for its
        turn in the replica's in-flight capacity. For ``output_format`` svg the images are PNGs, for the Gateway to
        hand to the Vectorizer.
        """
        metrics.observe_queue_time(metrics.TEXT_TO_IMAGE, sent_at)
        job = to_generation(request, self.pipeline.dims.native_size)
        admitted = self.admission.check(job.n, job.steps, job.width, job.height)
        raster_format = "png" if request.output_format == "svg" else request.output_format
        with metrics.timed(metrics.PIPELINE_LATENCY, pipeline=metrics.TEXT_TO_IMAGE, outcome="ok"):
            async with self.admission.slot(admitted.cost):
                result = await self.pipeline.generate(job, tiled_decode=admitted.tiled_decode)
            images = await asyncio.gather(
                *(asyncio.to_thread(encode_image, image, raster_format) for image in result.images)
            )
        metrics.count(metrics.DENOISING_STEPS, request.num_inference_steps, scheduler=request.scheduler)
        metrics.count(metrics.IMAGES_GENERATED, len(images), output_format=request.output_format)
        return EncodedImages(list(images), result.seed, result.prompt_tokens_dropped)

    async def ready(self) -> dict[str, bool]:
        """Readiness of each Triton model this deployment needs."""
        return await self.triton.models_ready(tuple(self.pipeline.specs))

    async def check_health(self) -> None:
        """Ray Serve health check: the replica's event loop answers (Triton's state is /readyz's business)."""


def require_ready(states: dict[str, bool]) -> None:
    """Raise :class:`NotReady` naming the models that are not ready."""
    missing = sorted(name for name, ready in states.items() if not ready)
    if missing:
        raise NotReady(f"Triton models not ready: {', '.join(missing)}", retry_after_s=5)
