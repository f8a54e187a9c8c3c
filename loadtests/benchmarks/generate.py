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
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from loadtests.benchmarks import loop
from loadtests.benchmarks.loop import BenchRow
from serve.protocol.schema import Sampling
from serve.text_to_image.engine_folder import EngineFolder

# A context manager factory under which in-process timings run (``Stack.paused`` stops the stack).
PauseStack = Callable[[], AbstractContextManager]

logger = logging.getLogger(__name__)

PROMPTS = ("a lighthouse on a cliff", "a red fox, flat icon", "a bowl of ramen, watercolor", "a city skyline at night")


@dataclass(frozen=True)
class GenerateSettings(Sampling):
    """What every column runs: the API's sampling (its defaults unless given), at ``size``."""

    size: int = 256
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
    from serve.text_to_image.generation import Generation, SamplingParams

    return Generation(
        SamplingParams(
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
    engines: EngineFolder, api_url: str, settings: GenerateSettings, pause: PauseStack = nullcontext
) -> list[BenchRow]:
    """(b) and (c) at concurrency 1, taking turns request by request so that both see the same machine.

    The in-process ONNX Runtime requests run inside ``pause`` (the stack stopped), the served ones with the stack
    running: a slow spell of a shared machine then hits both columns alike.
    """
    from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
    from serve.text_to_image.pipeline import TextToImagePipeline

    pipeline = TextToImagePipeline(engines, OnnxRuntimeRunner(engines))

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


def _run_s(run, feeds: dict) -> float:
    started = time.perf_counter()
    run(feeds)
    return time.perf_counter() - started


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

    Per image: ``2 x steps`` UNet rows (classifier-free guidance), 2 text-encoder rows, 1 VAE row. A sweep
    (:meth:`sweep`, round-robin) over the ways of using all cores (:func:`_layouts`) and a range of batch sizes keeps,
    per engine, each layout's cheapest setting and any other within 10 % of the cheapest per-row time (at most
    ``max_candidates``): one noisy sweep must not pick, or drop, the setting. :meth:`time` times every candidate
    afresh, as often as a benchmark needs, so each served run can be bracketed by floor timings. A timing counts the
    candidate with the lowest mean over the sweep and the timings before it, not the one fastest within it:
    near-equal settings each win some timings by luck, and the fastest of several noisy times is biased fast. Each
    candidate runs back to back for ``engine_s``: this machine's speed swings within seconds, and a served chunk
    lasts tens of seconds. All timings run inside ``pause``.
    """

    def __init__(
        self,
        candidates: dict[str, list[tuple[str, Callable, dict]]],
        sweep_ms_per_row: dict[str, dict[str, float]],
        rows_per_image: dict[str, int],
        pause: PauseStack = nullcontext,
        engine_s: float = 1.5,
    ) -> None:
        """``candidates``: per engine, (setting, run, feeds) to time; ``sweep_ms_per_row`` has each one's sweep time."""
        self._candidates, self.sweep_ms_per_row, self._rows_per_image = candidates, sweep_ms_per_row, rows_per_image
        self.pause, self.engine_s = pause, engine_s
        self.timings: list[dict] = []

    @classmethod
    def sweep(
        cls,
        engines: EngineFolder,
        settings: GenerateSettings,
        batch_sizes=(2, 4, 8, 16, 32),
        pause: PauseStack = nullcontext,
        engine_s: float = 1.5,
        max_candidates: int = 4,
    ) -> Floor:
        """Sweep ``engines`` at ``settings``' size and keep each one's candidates."""
        from serve.text_to_image.spec import TEXT_ENCODER, UNET, VAE_DECODER

        dims, specs = engines.family.dims, engines.specs
        latent = settings.size // dims.vae_scale_factor
        rng = np.random.default_rng(0)

        def feeds_for(name: str, batch: int) -> dict[str, np.ndarray]:
            feeds = {}
            for tensor in specs[name].inputs:
                shape = (batch, *tensor.shape(latent))
                values = rng.integers(0, 300, shape) if tensor.dtype == "int64" else rng.standard_normal(shape)
                feeds[tensor.name] = values.astype(tensor.numpy_dtype)
            return feeds

        sweep_ms_per_row, candidates = {}, {}
        for name in (TEXT_ENCODER, UNET, VAE_DECODER):
            layouts = _layouts(engines.engine(name).onnx)
            tried = [(layout, b) for layout in layouts for b in batch_sizes if b <= specs[name].max_batch_size]
            feeds = {setting: feeds_for(name, setting[1]) for setting in tried}
            per_row = defaultdict(list)
            for sweep_round in range(4):  # round-robin, so a slow spell slows every setting alike; round 0 warms up
                for (layout, batch), setting_feeds in feeds.items():
                    with pause():
                        seconds = _run_s(layouts[layout], setting_feeds)
                    if sweep_round:
                        per_row[layout, batch].append(seconds / batch)
            sweep = {setting: statistics.median(times) for setting, times in per_row.items()}
            sweep_ms_per_row[name] = {f"{layout} x{batch}": t * 1000 for (layout, batch), t in sweep.items()}
            ranked = sorted(sweep, key=sweep.get)
            kept = sorted((next(s for s in ranked if s[0] == layout) for layout in layouts), key=sweep.get)
            kept += [s for s in ranked if s not in kept and sweep[s] <= 1.1 * sweep[ranked[0]]]
            candidates[name] = [
                (f"{layout} x{batch}", layouts[layout], feeds[layout, batch]) for layout, batch in kept[:max_candidates]
            ]
        rows_per_image = {TEXT_ENCODER: 2, UNET: 2 * settings.steps, VAE_DECODER: 1}
        return cls(candidates, sweep_ms_per_row, rows_per_image, pause, engine_s)

    def time(self) -> dict:
        """Time every engine's candidates once more; the result is also kept in :attr:`timings`.

        ``counted`` is, per engine, the candidate with the lowest mean ms/row in the sweep and the earlier timings;
        ``ms_per_row`` has every candidate's time in this timing.
        """
        counted, ms_per_row, seconds_per_image = {}, {}, 0.0
        for name, candidates in self._candidates.items():
            pick = min((setting for setting, _, _ in candidates), key=lambda s: self._mean_ms_per_row(name, s))
            ms_per_row[name] = {}
            for setting, run, feeds in candidates:
                with self.pause():
                    per_row_s = _mean_run_s(run, feeds, self.engine_s) / len(next(iter(feeds.values())))
                ms_per_row[name][setting] = per_row_s * 1000
            counted[name] = {"setting": pick, "ms_per_row": ms_per_row[name][pick]}
            seconds_per_image += self._rows_per_image[name] * ms_per_row[name][pick] / 1000
        timing = {
            "images_per_s": 1 / seconds_per_image,
            "seconds_per_image": seconds_per_image,
            "counted": counted,
            "ms_per_row": ms_per_row,
        }
        logger.info("floor %.3f img/s (%s)", timing["images_per_s"], _describe(counted))
        self.timings.append(timing)
        return timing

    def _mean_ms_per_row(self, name: str, setting: str) -> float:
        """``setting``'s mean over the sweep and every timing so far."""
        times = [self.sweep_ms_per_row[name][setting], *(t["ms_per_row"][name][setting] for t in self.timings)]
        return statistics.mean(times)

    def mean_images_per_s(self) -> float:
        """The mean of every timing so far (a drifting machine's spells even out)."""
        return statistics.mean(t["images_per_s"] for t in self.timings)


def _describe(counted: dict) -> str:
    return ", ".join(f"{name} {c['setting']} {c['ms_per_row']:.2f} ms/row" for name, c in counted.items())


@dataclass
class _Chunks:
    """The chunks of :func:`bench_against_floor` so far: their latencies, wall and CPU time, rates against the floor."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    by_process: Counter = field(default_factory=Counter)
    steady: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    whole_ratios: list[float] = field(default_factory=list)

    def add(
        self, calls: list[loop.Call], size: int, wall: float, floor_per_s: float, cpu: float, by_process: dict
    ) -> None:
        """Count one chunk of ``size`` requests (``calls``) timed between floor timings averaging ``floor_per_s``."""
        self.cpu += cpu
        self.by_process.update(by_process)
        self.steady.append(loop.steady_rate(calls, self.concurrency))
        self.ratios.append(self.steady[-1] / floor_per_s)
        self.whole_ratios.append(size / wall / floor_per_s)
        logger.info(
            "served c=%d chunk: %.3f img/s steady = %.2f x the floor (whole chunk %.2f x)",
            self.concurrency,
            self.steady[-1],
            self.ratios[-1],
            self.whole_ratios[-1],
        )
        self.latencies += [c.latency_s for c in calls]
        self.wall += wall

    def results(self, total: int) -> tuple[BenchRow, dict]:
        """The served row over every chunk, and the ratios to the floor (medians over chunks) for ``total`` images."""
        row = loop.make_row("served", self.concurrency, self.latencies, self.wall, self.cpu)
        return row, {
            "concurrency": self.concurrency,
            "steady_images_per_s": self.steady,
            "chunk_ratios": self.ratios,
            "ratio": statistics.median(self.ratios),
            "whole_chunk_ratios": self.whole_ratios,
            "whole_ratio": statistics.median(self.whole_ratios),
            "cpu_s_per_image_by_process": {label: cpu_s / total for label, cpu_s in self.by_process.most_common()},
        }


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
            chunks = _Chunks(concurrency)
            before = floor.time()
            for size in sizes:
                processes, busy = loop.cpu_by_process(), loop.busy_s()  # the walk stays out of the window
                calls, chunk_wall = await loop.run_closed_loop(call, concurrency, size)
                cpu = loop.busy_s() - busy
                by_process = {k: v - processes.get(k, 0.0) for k, v in loop.cpu_by_process().items()}
                after = floor.time()
                floor_per_s = (before["images_per_s"] + after["images_per_s"]) / 2
                chunks.add(calls, size, chunk_wall, floor_per_s, cpu, by_process)
                before = after
            return chunks.results(total)

    return asyncio.run(run())


def run_benchmark(embedded: str, settings: GenerateSettings, out: Path) -> str:
    """``easel bench generate``: every column on one embedded model; writes JSON to ``out``, returns the report."""
    from build_engines.text_to_image.build import build, default_model_dir
    from serve.paths import run_dir
    from serve.stack import scratch_stack

    model_dir = default_model_dir(embedded)
    engines = build(model_dir, run_dir() / "bench" / "model_repository")
    rows = [bench_diffusers(model_dir, settings)]
    with scratch_stack(model_dir) as stack:
        floor = Floor.sweep(engines, settings, pause=stack.paused)
        ratios = []
        if 1 in settings.concurrency:
            rows += bench_single_request(engines, stack.info.api_url, settings, pause=stack.paused)
        for loaded in (c for c in settings.concurrency if c > 1):
            row, ratio = bench_against_floor(stack.info.api_url, settings, loaded, floor)  # times the floor too
            rows.append(row)
            ratios.append(ratio)
        if not floor.timings:
            floor.time()
    floor_per_s = floor.mean_images_per_s()
    context = {
        "settings": settings.__dict__,
        "model": embedded,
        "cpus": os.cpu_count(),
        "floor_sweep_ms_per_row": floor.sweep_ms_per_row,
        "floor_timings": floor.timings,
        "served_to_floor": ratios,
    }
    loop.write_json(out, rows, floor_images_per_s=floor_per_s, **context)
    return "\n".join([loop.format_table(rows, "img"), *_summary(rows, floor, ratios), f"written to {out}"])


def _summary(rows: list[BenchRow], floor: Floor, ratios: list[dict]) -> list[str]:
    """The lines under the table: the floor, and each served column against it."""
    floor_per_s = floor.mean_images_per_s()
    timed = [t["images_per_s"] for t in floor.timings]
    counted = Counter(f"{name} {c['setting']}" for t in floor.timings for name, c in t["counted"].items())
    lines = [
        f"compute floor: {floor_per_s:.3f} img/s, mean of {len(timed)} timings ({min(timed):.3f}-{max(timed):.3f}); "
        f"setting counted (timings): {', '.join(f'{key} ({count})' for key, count in sorted(counted.items()))}"
    ]
    by_key = {(r.method, r.concurrency): r for r in rows}
    if ("onnxruntime", 1) in by_key:
        ratio = by_key["served", 1].p50_ms / by_key["onnxruntime", 1].p50_ms
        lines.append(f"served c=1: p50 {ratio:.2f} x ONNX Runtime in-process (taking turns)")
    for ratio in ratios:
        overall = statistics.mean(ratio["steady_images_per_s"]) / floor_per_s
        chunks = " ".join(f"{r:.2f}" for r in ratio["chunk_ratios"])
        whole = " ".join(f"{r:.2f}" for r in ratio["whole_chunk_ratios"])
        lines.append(
            f"served c={ratio['concurrency']}: {ratio['ratio']:.2f} x the floor's throughput with all "
            f"{ratio['concurrency']} requests in flight (median of chunks, each against the floor timed around it: "
            f"{chunks}); whole chunks, drain included: {ratio['whole_ratio']:.2f} x ({whole}); mean steady rate "
            f"against the mean of all floor timings: {overall:.2f} x"
        )
        by_process = ratio["cpu_s_per_image_by_process"]
        top = ", ".join(f"{label} {cpu_s:.3f}" for label, cpu_s in list(by_process.items())[:8])
        lines.append(f"  CPU-s per image by process: {top}, all {sum(by_process.values()):.3f}")
    return lines
