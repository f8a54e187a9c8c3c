"""``easel bench generate``: the same weights, prompts, steps and size through diffusers, ONNX Runtime and the stack.

Columns: (a) diffusers' StableDiffusionPipeline in-process (PyTorch), (b) the same ONNX engines in-process with ONNX
Runtime through Easel's pipeline code, (c) the served stack over HTTP at each concurrency. Each column is warmed up,
then timed; latency p50/p95 and images/s are reported.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from serve.benchmarks.loop import BenchRow, measure

logger = logging.getLogger(__name__)

PROMPTS = ("a lighthouse on a cliff", "a red fox, flat icon", "a bowl of ramen, watercolor", "a city skyline at night")


@dataclass(frozen=True)
class GenerateSettings:
    """What every column runs."""

    steps: int = 20
    size: int = 256
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    repeats: int = 3
    concurrency: tuple[int, ...] = (1,)


def bench_diffusers(model_dir: Path, settings: GenerateSettings) -> BenchRow:
    """(a) diffusers in-process, one request at a time."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)

    async def call(index: int) -> None:
        pipeline(
            PROMPTS[index % len(PROMPTS)],
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            height=settings.size,
            width=settings.size,
            generator=torch.Generator().manual_seed(index),
        )

    return asyncio.run(measure("diffusers", call, 1, settings.repeats))


def bench_onnxruntime(engine_dir: Path, settings: GenerateSettings) -> BenchRow:
    """(b) the ONNX engines in-process with ONNX Runtime, one request at a time."""
    from serve.text_to_image.pipeline import Generation, OnnxRuntimeRunner, TextToImagePipeline

    pipeline = TextToImagePipeline(engine_dir, OnnxRuntimeRunner(engine_dir))

    async def call(index: int) -> None:
        await pipeline.generate(
            Generation(
                PROMPTS[index % len(PROMPTS)],
                "",
                1,
                settings.size,
                settings.size,
                settings.steps,
                settings.guidance_scale,
                index,
                settings.scheduler,
            )
        )

    return asyncio.run(measure("onnxruntime", call, 1, settings.repeats))


def _median_run_s(session, feeds: dict, repeats: int) -> float:
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compute_floor(engine_dir: Path, settings: GenerateSettings, batch_sizes=(2, 4, 8, 16, 32)) -> dict:
    """Images/s these engines give with zero serving overhead: each engine at its best batch size, all cores.

    Per image: ``2 x steps`` UNet rows (classifier-free guidance), 2 text-encoder rows, 1 VAE row, each at the
    cheapest per-row time over ``batch_sizes``.
    """
    from serve.text_to_image.spec import TEXT_ENCODER, UNET, VAE_DECODER, PipelineDims, engine_specs
    from serve.triton.onnx_backend import make_session

    dims = PipelineDims.load(engine_dir / "pipeline.json")
    specs = engine_specs(dims)
    latent = settings.size // dims.vae_scale_factor
    rng = np.random.default_rng(0)
    per_row: dict[str, dict[int, float]] = {}
    for name in (TEXT_ENCODER, UNET, VAE_DECODER):
        session = make_session(engine_dir / name / "model.onnx")
        per_row[name] = {}
        for batch in batch_sizes:
            if batch > specs[name].max_batch_size:
                continue
            feeds = {}
            for tensor in specs[name].inputs:
                shape = (batch, *(latent if d == -1 else d for d in tensor.dims))
                feeds[tensor.name] = (
                    rng.integers(0, 300, shape) if tensor.dtype == "int64" else rng.standard_normal(shape)
                ).astype(tensor.numpy_dtype)
            per_row[name][batch] = _median_run_s(session, feeds, settings.repeats) / batch
            logger.info("floor %-12s batch %-3d %.2f ms/row", name, batch, per_row[name][batch] * 1000)
    best = {name: min(rows.values()) for name, rows in per_row.items()}
    seconds_per_image = 2 * settings.steps * best[UNET] + 2 * best[TEXT_ENCODER] + best[VAE_DECODER]
    return {
        "images_per_s": 1 / seconds_per_image,
        "seconds_per_image": seconds_per_image,
        "best_batch": {name: min(rows, key=rows.get) for name, rows in per_row.items()},
        "ms_per_row": {name: {b: t * 1000 for b, t in rows.items()} for name, rows in per_row.items()},
    }


def bench_served(api_url: str, settings: GenerateSettings) -> list[BenchRow]:
    """(c) the served stack over HTTP, at each concurrency."""

    async def run_all() -> list[BenchRow]:
        limits = httpx.Limits(max_connections=max(settings.concurrency))
        async with httpx.AsyncClient(base_url=api_url, timeout=600, limits=limits) as client:

            async def call(index: int) -> None:
                body = {
                    "prompt": PROMPTS[index % len(PROMPTS)],
                    "seed": index,
                    "size": f"{settings.size}x{settings.size}",
                    "num_inference_steps": settings.steps,
                    "guidance_scale": settings.guidance_scale,
                    "scheduler": settings.scheduler,
                }
                response = await client.post("/v1/images/generations", json=body)
                response.raise_for_status()

            return [await measure("served", call, c, c * settings.repeats) for c in settings.concurrency]

    return asyncio.run(run_all())
