"""``easel bench generate``: the same weights, prompts, steps and size through diffusers, ONNX Runtime and the stack.

Columns: (a) diffusers' StableDiffusionPipeline in-process (PyTorch), (b) the same ONNX engines in-process with ONNX
Runtime through Easel's pipeline code, (c) the served stack over HTTP at each concurrency. Each column is warmed up,
then timed; latency p50/p95 and images/s are reported. (b) and (c) at concurrency 1 take turns, and each loaded run
of (c) is split into chunks bracketed by timings of the compute floor, so a shared machine's slow spells hit both
sides of each ratio.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from serve.benchmarks import loop
from serve.benchmarks.loop import BenchRow

# A context manager factory under which in-process timings run (``loop.children_paused`` stops the stack).
PauseStack = Callable[[], AbstractContextManager]

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

    return asyncio.run(loop.measure("diffusers", call, 1, settings.repeats))


def _generation(settings: GenerateSettings, index: int):
    from serve.text_to_image.pipeline import Generation

    return Generation(
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


def _request_body(settings: GenerateSettings, index: int) -> dict:
    return {
        "prompt": PROMPTS[index % len(PROMPTS)],
        "seed": index,
        "size": f"{settings.size}x{settings.size}",
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "scheduler": settings.scheduler,
    }


def bench_single_request(
    engine_dir: Path, api_url: str, settings: GenerateSettings, pause: PauseStack = nullcontext
) -> list[BenchRow]:
    """(b) and (c) at concurrency 1, taking turns request by request so that both see the same machine.

    The in-process ONNX Runtime requests run inside ``pause`` (the stack stopped), the served ones with the stack
    running: a slow spell of a shared machine then hits both columns alike.
    """
    from serve.text_to_image.pipeline import OnnxRuntimeRunner, TextToImagePipeline

    pipeline = TextToImagePipeline(engine_dir, OnnxRuntimeRunner(engine_dir))

    async def run() -> list[BenchRow]:
        async with httpx.AsyncClient(base_url=api_url, timeout=600) as client:

            async def in_process(index: int) -> None:
                with pause():
                    await pipeline.generate(_generation(settings, index))

            async def served(index: int) -> None:
                response = await client.post("/v1/images/generations", json=_request_body(settings, index))
                response.raise_for_status()

            timed = {"onnxruntime": (in_process, [], [0.0]), "served": (served, [], [0.0])}
            for index in range(settings.repeats + 1):  # round 0 warms up
                for call, latencies, cpu in timed.values():
                    busy, started = loop.busy_s(), time.perf_counter()
                    await call(index)
                    if index > 0:
                        latencies.append(time.perf_counter() - started)
                        cpu[0] += loop.busy_s() - busy
            return [loop.make_row(name, 1, lat, sum(lat), cpu[0]) for name, (_, lat, cpu) in timed.items()]

    return asyncio.run(run())


def _median_run_s(run, feeds: dict, repeats: int) -> float:
    run(feeds)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _mean_run_s(run, feeds: dict, min_s: float) -> float:
    """Seconds per run, over back-to-back runs that last at least ``min_s`` (after one warm-up run)."""
    run(feeds)
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_s or count < 3:
        run(feeds)
        count += 1
    return elapsed / count


def _layouts(model_path: Path) -> dict:
    """Ways for one engine to use every core: intra-op threads (spinning: their fastest) or the batch split."""
    from serve.triton.onnx_backend import ShardedSession, make_session

    threaded = make_session(model_path, intra_op_threads=0, spinning=True)
    return {"threads": lambda feeds: threaded.run(None, feeds), "sharded": ShardedSession(model_path).run}


class Floor:
    """The compute floor: images/s these engines give with zero serving overhead.

    Per image: ``2 x steps`` UNet rows (classifier-free guidance), 2 text-encoder rows, 1 VAE row. A sweep over the
    ways of using all cores (:func:`_layouts`) and the batch sizes in ``batch_sizes`` keeps, per engine, the settings
    within 10 % of its cheapest per-row time (at most ``max_candidates``): one noisy sweep timing must not pick the
    setting. :meth:`time` times those candidates afresh and keeps each engine's fastest, as often as a benchmark
    needs, so each served run can be bracketed by floor timings. Each candidate runs back to back for ``engine_s``:
    this machine's speed swings within seconds, and a served chunk lasts tens of seconds. All timings run inside
    ``pause``.
    """

    def __init__(
        self,
        engine_dir: Path,
        settings: GenerateSettings,
        batch_sizes=(2, 4, 8, 16, 32),
        pause: PauseStack = nullcontext,
        engine_s: float = 1.5,
        max_candidates: int = 4,
    ) -> None:
        from serve.text_to_image.spec import TEXT_ENCODER, UNET, VAE_DECODER, PipelineDims, engine_specs

        self.settings, self.pause, self.engine_s = settings, pause, engine_s
        dims = PipelineDims.load(engine_dir / "pipeline.json")
        specs = engine_specs(dims)
        latent = settings.size // dims.vae_scale_factor
        rng = np.random.default_rng(0)

        def feeds_for(name: str, batch: int) -> dict[str, np.ndarray]:
            feeds = {}
            for tensor in specs[name].inputs:
                shape = (batch, *(latent if d == -1 else d for d in tensor.dims))
                values = rng.integers(0, 300, shape) if tensor.dtype == "int64" else rng.standard_normal(shape)
                feeds[tensor.name] = values.astype(tensor.numpy_dtype)
            return feeds

        self.sweep_ms_per_row: dict[str, dict[str, float]] = {}
        self._candidates: dict[str, list[tuple[str, Callable, dict]]] = {}
        for name in (TEXT_ENCODER, UNET, VAE_DECODER):
            layouts = _layouts(engine_dir / name / "model.onnx")
            tried = [(layout, b) for layout in layouts for b in batch_sizes if b <= specs[name].max_batch_size]
            sweep = {}
            for layout, batch in tried:
                with pause():
                    sweep[layout, batch] = _median_run_s(layouts[layout], feeds_for(name, batch), 3) / batch
            self.sweep_ms_per_row[name] = {f"{layout} x{batch}": t * 1000 for (layout, batch), t in sweep.items()}
            cheapest = min(sweep.values())
            close = sorted((setting for setting, t in sweep.items() if t <= 1.1 * cheapest), key=sweep.get)
            self._candidates[name] = [
                (f"{layout} x{batch}", layouts[layout], feeds_for(name, batch))
                for layout, batch in close[:max_candidates]
            ]
        self._rows_per_image = {TEXT_ENCODER: 2, UNET: 2 * settings.steps, VAE_DECODER: 1}
        self.timings: list[dict] = []

    def time(self) -> dict:
        """Time every engine's candidates once more and keep the fastest; the result is also kept in :attr:`timings`."""
        best, seconds_per_image = {}, 0.0
        for name, candidates in self._candidates.items():
            per_row = {}
            for key, run, feeds in candidates:
                with self.pause():
                    per_row[key] = _mean_run_s(run, feeds, self.engine_s) / len(next(iter(feeds.values())))
            key = min(per_row, key=per_row.get)
            best[name] = {"setting": key, "ms_per_row": per_row[key] * 1000}
            seconds_per_image += self._rows_per_image[name] * per_row[key]
        timing = {"images_per_s": 1 / seconds_per_image, "seconds_per_image": seconds_per_image, "best": best}
        logger.info("floor %.3f img/s (%s)", timing["images_per_s"], _describe(best))
        self.timings.append(timing)
        return timing

    def mean_images_per_s(self) -> float:
        """The mean of every timing so far (a drifting machine's spells even out)."""
        return statistics.mean(t["images_per_s"] for t in self.timings)


def _describe(best: dict) -> str:
    return ", ".join(f"{name} {b['setting']} {b['ms_per_row']:.2f} ms/row" for name, b in best.items())


def bench_against_floor(
    api_url: str, settings: GenerateSettings, concurrency: int, floor: Floor, repeats_per_chunk: int = 4
) -> tuple[BenchRow, dict]:
    """(c) at ``concurrency``, in closed-loop chunks of ``repeats_per_chunk`` requests per slot between floor timings.

    A shared machine drifts by more than the gap being measured, so each chunk's throughput is divided by the mean of
    the floor timed just before and just after it; the ratio reported is the median over chunks. (The floor is not
    timed while requests are in flight: Triton's python backend takes a stub stopped mid-request for a dead one.) A
    chunk's throughput is its steady rate (:func:`loop.steady_rate`: the drain at its end, with fewer than
    ``concurrency`` requests in flight, left out); its whole rate, drain included, is kept beside it. The row pools
    every chunk's latencies; its images/s is all requests over all chunks' wall time. Where the CPU went is kept per
    process of the stack (:func:`loop.cpu_by_process`), per image.
    """
    if min(settings.repeats, repeats_per_chunk) < 2:
        raise ValueError("a steady rate needs at least 2 requests per slot in each chunk")
    total = concurrency * settings.repeats
    sizes = [len(part) for part in np.array_split(np.arange(total), max(1, settings.repeats // repeats_per_chunk))]

    async def run() -> tuple[BenchRow, dict]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=api_url, timeout=600, limits=limits) as client:

            async def call(index: int) -> None:
                response = await client.post("/v1/images/generations", json=_request_body(settings, index))
                response.raise_for_status()

            await loop.run_closed_loop(call, concurrency, concurrency)  # warm-up
            latencies, wall, cpu, by_process = [], 0.0, 0.0, Counter()
            steady, ratios, whole_ratios = [], [], []
            before = floor.time()
            for size in sizes:
                processes, busy = loop.cpu_by_process(), loop.busy_s()  # the walk stays out of the window
                calls, chunk_wall = await loop.run_closed_loop(call, concurrency, size)
                cpu += loop.busy_s() - busy
                by_process.update({k: v - processes.get(k, 0.0) for k, v in loop.cpu_by_process().items()})
                after = floor.time()
                floor_per_s = (before["images_per_s"] + after["images_per_s"]) / 2
                steady.append(loop.steady_rate(calls, concurrency))
                ratios.append(steady[-1] / floor_per_s)
                whole_ratios.append(size / chunk_wall / floor_per_s)
                logger.info(
                    "served c=%d chunk: %.3f img/s steady = %.2f x the floor (whole chunk %.2f x)",
                    concurrency,
                    steady[-1],
                    ratios[-1],
                    whole_ratios[-1],
                )
                latencies += [c.latency_s for c in calls]
                wall += chunk_wall
                before = after
            row = loop.make_row("served", concurrency, latencies, wall, cpu)
            return row, {
                "concurrency": concurrency,
                "steady_images_per_s": steady,
                "chunk_ratios": ratios,
                "ratio": statistics.median(ratios),
                "whole_chunk_ratios": whole_ratios,
                "whole_ratio": statistics.median(whole_ratios),
                "cpu_s_per_image_by_process": {label: cpu_s / total for label, cpu_s in by_process.most_common()},
            }

    return asyncio.run(run())
