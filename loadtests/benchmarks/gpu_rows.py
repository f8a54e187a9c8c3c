"""The rows of one model in ``easel bench gpu`` (:mod:`loadtests.benchmarks.gpu`): engine parity, diffusers, served.

Each stage loads what it measures and frees it before the next: the engines one at a time for their parity, diffusers'
pipeline for its rows, then Triton with the model's engines and its loop model.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loadtests.benchmarks import loop
from loadtests.benchmarks.generate import PROMPTS
from serve.text_to_image.engine_folder import EngineFolder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuModel:
    """One model of the run: its size, the concurrencies served and the waves diffusers runs as one batch."""

    name: str  # "tiny" (the embedded default) or a published model with random weights
    size: int
    concurrency: tuple[int, ...]
    waves: tuple[int, ...]
    psnr: bool = False  # each image's PSNR against diffusers' (meaningful with trained weights only)


@dataclass(frozen=True)
class GpuBenchSettings:
    """What ``easel bench gpu`` runs: the models in order, sampling, timed requests per slot, the time budget."""

    models: tuple[str, ...] = ("tiny", "sd15", "sdxl")
    device: str = "cuda"
    steps: int = 20
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    repeats: int = 2
    budget_s: float = 450.0
    smoke: bool = False  # the CPU run: each model at 64 px, one concurrency above 1, the loop model's rows alone
    buckets: tuple[int, ...] = ()  # the denoisers' buckets the loop model captures (none: the build's)


class Report:
    """The run's JSON, written again after every row so that a run cut short keeps what it measured."""

    def __init__(self, path: Path, **context) -> None:
        self.path, self.started = path, time.monotonic()
        self.data: dict = {**context, "rows": [], "parity": [], "psnr": [], "skipped": [], "failed": []}
        self.write()

    def left_s(self, budget_s: float) -> float:
        """Seconds of the budget left."""
        return budget_s - (time.monotonic() - self.started)

    def add(self, kind: str, entry: dict) -> None:
        """Add ``entry`` to the list ``kind`` and write the file."""
        self.data[kind].append(entry)
        self.write()
        logger.info("%s: %s", kind, entry)

    def write(self) -> None:
        """Write the JSON (its elapsed seconds included)."""
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))


class PeakMemory:
    """The device's peak memory in use (every process's: Triton's too) while the block runs, sampled every 20 ms."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True) if self.device == "cuda" else None
        if self._thread:
            self._thread.start()
        return self

    def _sample(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            self._stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


@dataclass
class ModelRun:
    """One model's run: its folder, engines and what each row measures against."""

    model: GpuModel
    settings: GpuBenchSettings
    report: Report
    model_dir: Path = field(default=None)
    prefix: str = ""

    def sampling(self, index: int, prompts: tuple[str, ...] = PROMPTS):
        """Request ``index``'s sampling (``prompts`` cycle, seed = index)."""
        from serve.text_to_image.generation import SamplingParams

        s, size = self.settings, self.model.size
        prompt = prompts[index % len(prompts)]
        return SamplingParams(prompt, "", 1, size, size, s.steps, s.guidance_scale, index, s.scheduler)

    def spent(self, what: dict) -> bool:
        """Whether the budget is spent (``what`` is then listed as skipped)."""
        if self.report.left_s(self.settings.budget_s) > 0:
            return False
        self.report.add("skipped", {"model": self.model.name, **what, "why": "the time budget was spent"})
        return True

    async def timed(self, method: str, concurrency: int, call: Callable, images_per_call: int = 1) -> None:
        """One row: ``call(index)`` from ``concurrency`` slots after a warm-up, ``repeats`` calls per slot."""
        if self.spent({"method": method, "concurrency": concurrency}):
            return
        total = concurrency * self.settings.repeats
        try:
            with PeakMemory(self.settings.device) as memory:
                row = await loop.measure(method, call, concurrency, total, warmup=concurrency)
        except Exception as error:  # noqa: BLE001 - the row's failure is recorded; the next row still runs
            logger.exception("%s at c=%d failed", method, concurrency)
            entry = {"model": self.model.name, "method": method, "concurrency": concurrency}
            self.report.add("failed", entry | {"error": f"{type(error).__name__}: {error}"[:2000]})
            return
        images = {"concurrency": concurrency * images_per_call, "requests": row.requests * images_per_call}
        entry = asdict(row) | images | {"per_s": row.per_s * images_per_call}
        self.report.add("rows", {"model": self.model.name, **entry, "peak_memory_gib": round(memory.peak / 2**30, 2)})


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


STUB_READS_NUMPY = int(np.__version__.split(".")[0]) < 2
"""Whether Triton's python-backend stub (nvidia-pytriton 0.7: pybind11 before NumPy 2) reads ``as_numpy`` right here."""

PSNR_PROMPTS = ("a lighthouse on a cliff", "a red fox, flat icon", "a city skyline at night", "a teapot, line art")
"""The embedded default's images compared with diffusers' (seeds 0..3): prompts within its 16 tokens (a longer one is
cut by diffusers and read whole by Easel, so their images differ by design)."""


def model_dir(name: str) -> Path:
    """The model's diffusers folder: the embedded default, or a published model made with random weights (once)."""
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.text_to_image.published import create_random_model
    from serve.paths import easel_home

    if name == "tiny":
        return default_model_dir("tiny")
    folder = easel_home() / "models" / f"random-{name}"
    return folder if (folder / "model_index.json").exists() else create_random_model(name, folder)


def run_model(run: ModelRun, out: Path) -> None:
    """Build the model's torch engines and run its rows: parity per engine, diffusers, Easel through Triton."""
    from build_engines.text_to_image.build import build

    cuda = run.settings.device == "cuda"
    run.model_dir = model_dir(run.model.name)
    run.prefix = f"{run.model.name}."
    repository = out / "model_repository"
    how = {"runtime": "torch", "precision": "fp16" if cuda else "fp32", "device": run.settings.device}
    folder = build(run.model_dir, repository, prefix=run.prefix, **how)
    engine_parity(run, folder)
    reference = asyncio.run(diffusers_rows(run, folder))
    asyncio.run(served_rows(run, folder, repository, out, reference))


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine_parity(run: ModelRun, folder: EngineFolder) -> None:
    """Each engine call (one row at the native size: its CUDA graph) against the diffusers module in the same dtype."""
    import torch

    from build_engines.openvino import error_against
    from build_engines.text_to_image.export import serving_feeds
    from serve.triton.onnx_backend import open_engine

    device = "cuda" if run.settings.device == "cuda" else "cpu"
    modules = folder.family.export_modules(run.model_dir)
    for name, spec in folder.specs.items():
        if run.spent({"parity": name}):
            return
        feeds = {k: v.numpy() for k, v in serving_feeds(spec, folder.family, seed=1).items()}
        session = open_engine(folder.engine(name), device=device)
        session.capture([1])
        got = session.run(feeds)
        dtype = session.dtype
        del session
        _free()
        module = modules[name].load(dtype).to(device, dtype).eval()
        inputs = [torch.from_numpy(feeds[t.name]).to(device) for t in spec.graph_inputs]
        with torch.inference_mode():
            want = module(*(x.to(dtype) if x.is_floating_point() else x for x in inputs))
        want = [w.float().cpu().numpy() for w in (want if isinstance(want, tuple) else (want,))]
        del module
        _free()
        entry = {"model": run.model.name, "engine": name, "dtype": str(dtype).removeprefix("torch.")}
        run.report.add("parity", entry | {"relative_error": error_against(got, want)})


async def diffusers_rows(run: ModelRun, folder: EngineFolder) -> list[np.ndarray]:
    """Diffusers one request at a time and as a static batch per wave; its images for the PSNR check (if asked)."""
    import diffusers
    import torch

    device = run.settings.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipeline = getattr(diffusers, folder.family.pipeline_class).from_pretrained(run.model_dir, torch_dtype=dtype)
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    s, size = run.settings, run.model.size

    def images(first: int, count: int, cycled: tuple[str, ...] = PROMPTS) -> np.ndarray:
        generators = [torch.Generator("cpu").manual_seed(first + i) for i in range(count)]
        prompts = [cycled[(first + i) % len(cycled)] for i in range(count)]
        kwargs = {"num_inference_steps": s.steps, "guidance_scale": s.guidance_scale, "height": size, "width": size}
        out = pipeline(prompts, generator=generators, output_type="np", **kwargs).images
        return (out * 255).round().astype(np.uint8)

    label = f"diffusers {str(dtype).removeprefix('torch.')}"
    await run.timed(f"{label}, one at a time", 1, lambda i: asyncio.to_thread(images, i, 1))
    for wave in run.model.waves:
        await run.timed(f"{label}, a wave as one batch", 1, lambda i, w=wave: asyncio.to_thread(images, i * w, w), wave)
    reference = [images(i, 1, PSNR_PROMPTS)[0] for i in range(len(PSNR_PROMPTS))] if run.model.psnr else []
    pipeline = None  # its weights leave the device before Triton loads its own
    _free()
    return reference


async def served_rows(run: ModelRun, folder: EngineFolder, repository: Path, out: Path, reference: list) -> None:
    """Easel through Triton, its rows and the PSNR of the loop's images against ``reference``.

    The loop inside Triton, merged at each concurrency, the PSNR, the loop unmerged at c=1; the replica's loop calling
    Triton at every step, at c=1, where the stub reads NumPy tensors right (:data:`STUB_READS_NUMPY`).
    """
    from serve.text_to_image.generation import Generation
    from serve.text_to_image.models import triton_specs
    from serve.text_to_image.pipeline import TextToImagePipeline
    from serve.text_to_image.spec import TRANSFORMER, UNET, VAE_DECODER
    from serve.text_to_image.triton_loop import LoopClient, loop_spec
    from serve.triton.client import TritonClient
    from serve.triton.repository import install_model
    from serve.triton.runners import model_runner, replica_runner
    from serve.triton.server import TritonServer

    cuda = run.settings.device == "cuda"
    loop_model = loop_spec(folder.path, run.prefix, run.settings.buckets)
    install_model(loop_model, repository, gpu=cuda)
    named = triton_specs(folder, run.prefix)
    per_step = [spec for engine, spec in named.items() if engine.startswith("text_encoder")]
    per_step += [named[engine] for engine in (UNET, TRANSFORMER, VAE_DECODER) if engine in named]
    per_step = [] if run.settings.smoke else per_step  # the smoke run: the loop model's rows alone
    if per_step and not STUB_READS_NUMPY:
        why = "Triton's engine models read tensors with as_numpy, which this stub (built before NumPy 2) misreads"
        method = "easel, replica's loop, Triton per step"
        run.report.add("skipped", {"model": run.model.name, "method": method, "why": why})
        per_step = []
    if run.spent({"method": "Triton's start"}):
        return
    server = TritonServer(repository, out / f"triton-{run.model.name}.log", models=[loop_model, *per_step])
    server.start(timeout_s=600)
    try:
        client = LoopClient(server.endpoints.grpc_url, loop_model.name)
        for concurrency in run.model.concurrency:
            await run.timed("easel, loop in Triton, merged", concurrency, lambda i: client.generate(run.sampling(i)))
        if reference and not run.spent({"psnr": run.model.name}):
            got = [(await client.generate(run.sampling(i, PSNR_PROMPTS)))[0] for i in range(len(reference))]
            values = [psnr(a, b) for a, b in zip(got, reference, strict=True)]
            run.report.add("psnr", {"model": run.model.name, "min_db": min(values), "mean_db": float(np.mean(values))})
        await run.timed("easel, loop in Triton, unmerged", 1, lambda i: client.generate(run.sampling(i), merge=False))
        if per_step:
            replica = TextToImagePipeline(
                folder, model_runner(replica_runner(TritonClient(server.endpoints.grpc_url)), run.prefix)
            )
            await run.timed(
                "easel, replica's loop, Triton per step", 1, lambda i: replica.generate(Generation(run.sampling(i)))
            )
        await client.close()
    finally:
        server.stop()
