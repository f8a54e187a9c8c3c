"""``easel bench generate --device cuda``: diffusers and Easel's loop side by side on one device, no Triton.

Rows, each at every concurrency: diffusers' pipeline (fp16 on a GPU; one request at a time, as it serves), Easel's
loop on the same weights as PyTorch modules (:class:`~loadtests.benchmarks.torch_runner.TorchRunner`) with each step
called on its own, and the same loop with the steps of concurrent requests merged into one UNet call
(``CoalescingRunner``, what the served stack does before Triton). Latency p50/p95, images/s and the device's peak
memory per row. On ``--device cpu`` it runs fp32 (a smoke run; the GPU is the point).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from loadtests.benchmarks import loop
from loadtests.benchmarks.generate import PROMPTS, GenerateSettings, _generation
from loadtests.benchmarks.loop import BenchRow
from serve.text_to_image.engine_folder import EngineFolder

logger = logging.getLogger(__name__)


def bench_on_device(
    model_dir: Path, engines: EngineFolder, settings: GenerateSettings, device: str
) -> tuple[list, dict]:
    """Every row on ``device``; returns the rows and each row's peak device memory (bytes, CUDA only).

    Every row runs in one event loop: the runners' locks (and the merging runner's futures) bind to the loop of their
    first contended call, so a row under a new ``asyncio.run`` after one that waited on them would fail.
    """
    return asyncio.run(_bench_on_device(model_dir, engines, settings, device))


async def _bench_on_device(
    model_dir: Path, engines: EngineFolder, settings: GenerateSettings, device: str
) -> tuple[list, dict]:
    import torch

    from loadtests.benchmarks.torch_runner import TorchRunner
    from serve.text_to_image.families import family_of_folder
    from serve.text_to_image.pipeline import TextToImagePipeline
    from serve.triton.coalesce import CoalescingRunner

    cuda = torch.device(device).type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    rows: list[BenchRow] = []
    peak: dict[str, int] = {}

    async def timed(method: str, call) -> None:
        for concurrency in settings.concurrency:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            total = settings.repeats * concurrency
            rows.append(await loop.measure(method, call, concurrency, total, warmup=concurrency))
            if cuda:
                peak[f"{method} c={concurrency}"] = torch.cuda.max_memory_allocated()

    pipeline_class = family_of_folder(model_dir).pipeline_class
    import diffusers

    loaded = {"diffusers": getattr(diffusers, pipeline_class).from_pretrained(model_dir, torch_dtype=dtype).to(device)}
    loaded["diffusers"].set_progress_bar_config(disable=True)
    one_at_a_time = asyncio.Lock()

    async def diffusers_call(index: int) -> None:
        async with one_at_a_time:
            await asyncio.to_thread(
                loaded["diffusers"],
                PROMPTS[index % len(PROMPTS)],
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                height=settings.size,
                width=settings.size,
                generator=torch.Generator(device).manual_seed(index),
            )

    logger.info("diffusers %s on %s", str(dtype).removeprefix("torch."), device)
    await timed(f"diffusers {str(dtype).removeprefix('torch.')}", diffusers_call)
    loaded.clear()  # its weights leave the device before the loop's copy arrives
    if cuda:
        torch.cuda.empty_cache()
    runner = TorchRunner(model_dir, engines, device, dtype)
    for method, runs in (("easel loop", runner), ("easel loop merged", CoalescingRunner(runner))):
        pipeline = TextToImagePipeline(engines, runs)

        async def easel_call(index: int, pipeline=pipeline) -> None:
            await pipeline.generate(_generation(settings, index))

        logger.info("%s on %s", method, device)
        await timed(method, easel_call)
    return rows, peak


def run_device_benchmark(model_dir: Path, settings: GenerateSettings, device: str, out: Path) -> str:
    """Build the engines (the loop reads their tokenizers and configs), run every row, write JSON, return the table."""
    import torch

    from build_engines.text_to_image.build import build
    from serve.paths import run_dir

    engines = build(model_dir, run_dir() / "bench" / "model_repository")
    rows, peak = bench_on_device(model_dir, engines, settings, device)
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    loop.write_json(out, rows, settings=settings.__dict__, model=str(model_dir), device=name, peak_memory_bytes=peak)
    lines = [loop.format_table(rows, "img"), f"device: {name}"]
    lines += [f"peak memory {key}: {value / 2**30:.2f} GiB" for key, value in peak.items()]
    return "\n".join([*lines, f"written to {out}"])
