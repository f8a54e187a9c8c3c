"""``easel bench generate``: the same weights, prompts, steps and size through diffusers, ONNX Runtime and the stack.

Columns: (a) diffusers' StableDiffusionPipeline in-process (PyTorch), (b) the same ONNX engines in-process with ONNX
Runtime through Easel's pipeline code, (c) the served stack over HTTP at each concurrency. Each column is warmed up,
then timed over ``repeats`` rounds; latency p50/p95 and images/s are reported, and the results are written as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

logger = logging.getLogger(__name__)

PROMPTS = ("a lighthouse on a cliff", "a red fox, flat icon", "a bowl of ramen, watercolor", "a city skyline at night")


@dataclass(frozen=True)
class BenchSettings:
    """What every column runs."""

    steps: int = 20
    size: int = 256
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    repeats: int = 3
    concurrency: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class BenchRow:
    """One column at one concurrency."""

    method: str
    concurrency: int
    requests: int
    p50_s: float
    p95_s: float
    images_per_s: float


async def _run_closed_loop(call: Callable[[int], Awaitable[None]], concurrency: int, total: int) -> tuple[list, float]:
    """``total`` calls, ``concurrency`` at a time; returns each call's latency and the wall time."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for index in counter:
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def _row(method: str, concurrency: int, latencies: list[float], wall_s: float) -> BenchRow:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return BenchRow(method, concurrency, len(ordered), statistics.median(ordered), p95, len(ordered) / wall_s)


async def _measure(method: str, call, concurrency: int, settings: BenchSettings) -> BenchRow:
    await _run_closed_loop(call, concurrency, concurrency)  # warm-up
    latencies, wall = await _run_closed_loop(call, concurrency, concurrency * settings.repeats)
    row = _row(method, concurrency, latencies, wall)
    logger.info(
        "%-10s c=%-3d p50 %.3f s  p95 %.3f s  %.2f img/s", method, concurrency, row.p50_s, row.p95_s, row.images_per_s
    )
    return row


def bench_diffusers(model_dir: Path, settings: BenchSettings) -> BenchRow:
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

    return asyncio.run(_measure("diffusers", call, 1, settings))


def bench_onnxruntime(engine_dir: Path, settings: BenchSettings) -> BenchRow:
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

    return asyncio.run(_measure("onnxruntime", call, 1, settings))


def bench_served(api_url: str, settings: BenchSettings) -> list[BenchRow]:
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

            return [await _measure("served", call, c, settings) for c in settings.concurrency]

    return asyncio.run(run_all())


def format_table(rows: list[BenchRow]) -> str:
    """A plain-text table of the rows."""
    lines = [f"{'method':<12}{'conc':>5}{'reqs':>6}{'p50 s':>9}{'p95 s':>9}{'img/s':>8}"]
    lines += [
        f"{r.method:<12}{r.concurrency:>5}{r.requests:>6}{r.p50_s:>9.3f}{r.p95_s:>9.3f}{r.images_per_s:>8.2f}"
        for r in rows
    ]
    return "\n".join(lines)


def write_json(rows: list[BenchRow], settings: BenchSettings, path: Path, **context) -> None:
    """Write the settings, context and rows as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": asdict(settings), **context, "rows": [asdict(r) for r in rows], "numpy": np.__version__}
    path.write_text(json.dumps(payload, indent=2))
