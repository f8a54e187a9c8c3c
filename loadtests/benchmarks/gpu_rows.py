"""The stages of one model in ``easel bench gpu`` (:mod:`loadtests.benchmarks.gpu`), each within its time share.

1. Its engines: the model made (random weights) and built for the torch runtime, in the run's work folder.
2. In-process checks (:mod:`loadtests.benchmarks.gpu_engines`): fp16 parity at every bucket, the 2-row graph replay,
   the fractional-timestep image.
3. Diffusers (fp16 on a GPU): one request at a time, and a wave of requests as one static batch.
4. Easel through Triton: the loop inside Triton called through the replica's client, merged at each concurrency, a
   1-step row (with the c=1 row: the loop's per-step cost), unmerged at c=1; the replica's loop calling Triton at every
   step at c=1 (its engine models loaded last, on the NumPy the stub reads right).

A video model (:attr:`GpuModel.video`) runs :mod:`loadtests.benchmarks.gpu_video`'s stages after step 1 instead.

Each stage frees what it loaded before the next. Rows come in the order of what issue 74's acceptance reads first;
each row checks its deadline before every call (:func:`loadtests.benchmarks.gpu_clock.timed_calls`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtests.benchmarks import loop
from loadtests.benchmarks.generate import PROMPTS
from loadtests.benchmarks.gpu_accept import LOOP_MERGED, LOOP_ONE_STEP, ONE_AT_A_TIME, WAVE
from loadtests.benchmarks.gpu_clock import Deadline, timed_calls
from loadtests.benchmarks.gpu_engines import EngineChecks, free, psnr
from loadtests.benchmarks.gpu_report import Report
from serve.text_to_image.engine_folder import EngineFolder

logger = logging.getLogger(__name__)

__all__ = ["GpuBenchSettings", "GpuModel", "ModelRun", "Report", "build_model", "image_stages", "psnr"]

LOOP_UNMERGED = "easel, loop in Triton, unmerged"
REPLICA_LOOP = "easel, replica's loop, Triton per step"
ENGINES_SHARE = 0.3
"""Of a model's time left once built: what the in-process checks may take (what they leave is listed as skipped)."""
DIFFUSERS_SHARE = 0.4
"""Of the time left after them: diffusers' rows; Easel's rows take the rest."""
C1_REPEATS = 5
"""Timed requests at c=1 (cheap), at least: the per-step cost is a difference of two of their medians."""


@dataclass(frozen=True)
class GpuModel:
    """One model of the run: its size, concurrencies and diffusers' waves (acceptance first), what else it runs."""

    name: str  # "tiny" (the embedded default) or a published model with random weights
    size: int
    concurrency: tuple[int, ...]
    waves: tuple[int, ...]
    psnr: bool = False  # each image's PSNR against diffusers' (meaningful with trained weights only)
    weight: float = 1.0  # its share of the run's time against the other models'
    fractional: bool = True  # the fractional-timestep image, fp16 against fp32
    replica_loop: bool = False  # the replica's loop, Triton per step, at c=1
    variants: bool = False  # the loop's variants beside it (gpu_variants: tensors via the host, finer buckets)
    video: bool = False  # an image-to-video model: the video stages instead (gpu_video: SVD and RIFE)


@dataclass(frozen=True)
class GpuBenchSettings:
    """What ``easel bench gpu`` runs: the models in order, sampling, timed requests per slot, the time budget."""

    models: tuple[str, ...] = ("sd15", "sdxl", "svd")
    device: str = "cuda"
    steps: int = 20
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    repeats: int = 2
    budget_s: float = 400.0
    smoke: bool = False  # the CPU run: each model at 64 px, the numbers mean nothing
    buckets: tuple[int, ...] = ()  # the denoisers' buckets the loop model captures (none: the build's)
    stub_numpy: str = ""  # a folder with a NumPy < 2 for Triton's python-backend stubs (the pack's)


LIVE_SERVERS: set = set()
"""Triton servers running now (the watchdog stops them before it ends the process)."""


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
            free_bytes, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free_bytes)
            self._stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


@dataclass
class ModelRun:
    """One model's run: its settings, report and deadline, and (once built) its folder and Triton names' prefix."""

    model: GpuModel
    settings: GpuBenchSettings
    report: Report
    deadline: Deadline
    model_dir: Path = field(default=None)
    prefix: str = ""

    def sampling(self, index: int, prompts: tuple[str, ...] = PROMPTS, steps: int | None = None):
        """Request ``index``'s sampling (``prompts`` cycle, seed = index)."""
        from serve.text_to_image.generation import SamplingParams

        s, size = self.settings, self.model.size
        prompt = prompts[index % len(prompts)]
        return SamplingParams(prompt, "", 1, size, size, steps or s.steps, s.guidance_scale, index, s.scheduler)

    def skip(self, what: dict, why: str = "the time budget was spent") -> None:
        """List ``what`` as skipped."""
        self.report.add("skipped", {"model": self.model.name, **what, "why": why})

    def engine_models_may_run(self, method: str) -> bool:
        """Whether rows calling Triton's engine models may run (else ``method`` is listed as skipped, with why).

        They read tensors with ``as_numpy``, which Triton 2.51's stub misreads under NumPy 2 (:func:`stub_reads_numpy`).
        """
        if not stub_reads_numpy(self.settings.stub_numpy):
            why = "Triton's engine models read tensors with as_numpy, which this stub (built before NumPy 2) misreads"
            self.skip({"method": method}, why + "; the pack's NumPy for the stub was not given (--stub-numpy)")
            return False
        if self.deadline.expired():
            self.skip({"method": method})
            return False
        return True

    async def timed(
        self, method: str, concurrency: int, call: Callable, images_per_call: int = 1, repeats: int | None = None
    ) -> dict | None:
        """One row: ``call(index)`` from ``concurrency`` slots after a warm-up of one call per slot.

        ``repeats`` (default: the settings') timed calls per slot; no call starts past the deadline: a row cut short
        is kept with what it measured, marked partial. Returns the row's entry (None: skipped or failed).
        """
        if self.deadline.expired():
            self.skip({"method": method, "concurrency": concurrency * images_per_call})
            return None
        total = concurrency * (repeats or self.settings.repeats)
        try:
            with PeakMemory(self.settings.device) as memory:
                timed = await timed_calls(call, concurrency, total, self.deadline, warmup=concurrency)
        except Exception as error:  # noqa: BLE001 - the row's failure is recorded; the next row still runs
            logger.exception("%s at c=%d failed", method, concurrency)
            entry = {"model": self.model.name, "method": method, "concurrency": concurrency}
            self.report.add("failed", entry | {"error": f"{type(error).__name__}: {error}"[:2000]})
            return None
        if not timed.latencies_s:
            self.skip({"method": method, "concurrency": concurrency * images_per_call}, "the deadline came first")
            return None
        row = loop.make_row(method, concurrency, list(timed.latencies_s), timed.wall_s, timed.cpu_s)
        entry = {
            "model": self.model.name,
            "method": method,
            "concurrency": concurrency * images_per_call,
            "requests": row.requests * images_per_call,
            "p50_ms": row.p50_ms,
            "p95_ms": row.p95_ms,
            "per_s": row.per_s * images_per_call,
            "cpu_s_per_request": row.cpu_s_per_request,
            "peak_memory_gib": round(memory.peak / 2**30, 2),
            "partial": timed.partial,
        }
        self.report.add("rows", entry)
        return entry


def stub_reads_numpy(stub_numpy: str) -> bool:
    """Whether Triton's python-backend stub (nvidia-pytriton 0.7: pybind11 before NumPy 2) reads ``as_numpy`` right.

    It does with NumPy 1 on its path: this process's, or the folder ``stub_numpy`` put first for it.
    """
    return int(np.__version__.split(".")[0]) < 2 or bool(stub_numpy)


@contextmanager
def first_on_path(folder: str) -> Iterator[None]:
    """``folder`` first on this process's import path for the block (what :func:`write_python_paths` writes)."""
    if not folder:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def build_model(run: ModelRun, work: Path) -> tuple[EngineFolder, Path]:
    """Make the model (``run.model_dir``) and build its engines into the work folder's repository: the folder, it."""
    from loadtests.benchmarks.gpu_models import build_unmeasured, model_dir

    cuda = run.settings.device == "cuda"
    run.model_dir = model_dir(run.model.name, run.settings.device)
    run.prefix = f"{run.model.name}."
    repository = work / "model_repository"
    precision = "fp16" if cuda else "fp32"
    return build_unmeasured(run.model_dir, repository, run.prefix, precision, run.settings.device), repository


def image_stages(
    run: ModelRun, folder: EngineFolder, repository: Path, work: Path, log_triton: Callable[[str, Path], None]
) -> None:
    """A text-to-image model's stages, each within its share of ``run.deadline``."""
    whole = run.deadline
    run.deadline = whole.within(whole.left_s() * ENGINES_SHARE)
    replay = stage(run, "engine checks", lambda: EngineChecks(run, folder).run_all(run.deadline))
    run.deadline = whole.within(whole.left_s() * DIFFUSERS_SHARE)
    reference = stage(run, "diffusers", lambda: asyncio.run(diffusers_rows(run, folder))) or []
    run.deadline = whole
    stage(run, "Triton", lambda: asyncio.run(served_rows(run, folder, repository, work, reference, replay, log_triton)))


def stage(run: ModelRun, name: str, stage: Callable):
    """``stage()``'s result; its failure recorded (None), so that the model's next stage still runs."""
    try:
        return stage()
    except Exception as error:  # noqa: BLE001 - recorded in the report with its stage
        logger.exception("%s: stage %s failed", run.model.name, name)
        entry = {"model": run.model.name, "stage": name, "error": f"{type(error).__name__}: {error}"[:2000]}
        run.report.add("failed", entry)
        return None


async def diffusers_rows(run: ModelRun, folder: EngineFolder) -> list[np.ndarray]:
    """Diffusers one request at a time and as a static batch per wave; its images for the PSNR check (if asked)."""
    if run.deadline.expired():
        run.skip({"method": "diffusers"})
        return []
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
    await run.timed(f"{label}, {ONE_AT_A_TIME}", 1, lambda i: asyncio.to_thread(images, i, 1))
    for wave in run.model.waves:
        await run.timed(f"{label}, {WAVE}", 1, lambda i, w=wave: asyncio.to_thread(images, i * w, w), wave)
    reference = []
    if run.model.psnr and not run.deadline.expired():
        reference = [images(i, 1, PSNR_PROMPTS)[0] for i in range(len(PSNR_PROMPTS))]
    pipeline = None  # its weights leave the device before Triton loads its own
    free()
    return reference


PSNR_PROMPTS = ("a lighthouse on a cliff", "a red fox, flat icon", "a city skyline at night", "a teapot, line art")
"""The embedded default's images compared with diffusers' (seeds 0..3): prompts within its 16 tokens (a longer one is
cut by diffusers and read whole by Easel, so their images differ by design)."""


class LoopCaller:
    """The loop model through the replica's client (:class:`~serve.text_to_image.loop_client.TritonLoop`)."""

    def __init__(self, url: str, model: str) -> None:
        from serve.text_to_image.loop_client import TritonLoop

        self.client = TritonLoop(url, model)

    async def images(self, sampling, merge: bool = True) -> np.ndarray:
        """One generation's images, ``[n, height, width, 3]`` uint8."""
        from serve.text_to_image.generation import Generation

        return np.stack((await self.client.generate(Generation(sampling), merge=merge)).images)

    async def close(self) -> None:
        """Close its channel."""
        await self.client.close()


async def served_rows(
    run: ModelRun,
    folder: EngineFolder,
    repository: Path,
    work: Path,
    reference: list,
    replay: tuple[float, str] | None,
    log_triton: Callable[[str, Path], None],
) -> None:
    """Easel through Triton: the loop model's rows, the per-step cost, the PSNR, the replica's loop per step."""
    from loadtests.benchmarks.gpu_variants import variant_rows, variant_specs
    from serve.text_to_image.loop_protocol import loop_spec
    from serve.triton.repository import install_model
    from serve.triton.server import TritonServer

    if run.deadline.expired():
        run.skip({"method": "easel, Triton"})
        return
    cuda = run.settings.device == "cuda"
    loop_model = loop_spec(folder.path, run.prefix, run.settings.buckets)
    variants = variant_specs(folder.path, run.prefix) if run.model.variants else {}
    for spec in (loop_model, *variants.values()):
        install_model(spec, repository, gpu=cuda)
    log = work / f"triton-{run.model.name}.log"
    log.unlink(missing_ok=True)
    server = TritonServer(repository, log, models=[loop_model, *variants.values()])
    LIVE_SERVERS.add(server)
    try:
        server.start(timeout_s=max(60.0, min(600.0, run.deadline.left_s() + 30)))
        caller = LoopCaller(server.endpoints.grpc_url, loop_model.name)
        others = {name: LoopCaller(server.endpoints.grpc_url, spec.name) for name, spec in variants.items()}
        try:
            await loop_rows(run, caller, reference, replay)
            if others:
                await variant_rows(run, caller, others, C1_REPEATS)
            if run.model.replica_loop:
                await replica_row(run, folder, server, repository)
        finally:
            for each in (caller, *others.values()):
                await each.close()
    finally:
        server.stop()
        LIVE_SERVERS.discard(server)
        log_triton(f"Triton log, {run.model.name}", log)


async def loop_rows(run: ModelRun, caller: LoopCaller, reference: list, replay: tuple[float, str] | None) -> None:
    """The loop model merged at each concurrency, the per-step cost at c=1, the PSNR, unmerged at c=1."""
    rows = {}
    for concurrency in run.model.concurrency:
        repeats = max(run.settings.repeats, C1_REPEATS) if concurrency == 1 else None
        call = lambda i: caller.images(run.sampling(i))  # noqa: E731
        rows[concurrency] = await run.timed(LOOP_MERGED, concurrency, call, repeats=repeats)
        if concurrency == 1 and rows[1] is not None:
            await per_step_row(run, caller, rows[1], replay)
    if reference and not run.deadline.expired():
        got = [(await caller.images(run.sampling(i, PSNR_PROMPTS)))[0] for i in range(len(reference))]
        values = [psnr(a, b) for a, b in zip(got, reference, strict=True)]
        run.report.add("psnr", {"model": run.model.name, "min_db": min(values), "mean_db": float(np.mean(values))})
    await run.timed(LOOP_UNMERGED, 1, lambda i: caller.images(run.sampling(i), merge=False))


async def per_step_row(run: ModelRun, caller: LoopCaller, full: dict, replay: tuple[float, str] | None) -> None:
    """The loop's cost per step at c=1, (p50 at S steps - p50 at 1 step) / (S - 1), against the bare replay."""
    steps = run.settings.steps
    if steps < 2:
        run.skip({"per_step": "the loop's cost per step"}, "it needs at least 2 steps")
        return
    one = await run.timed(LOOP_ONE_STEP, 1, lambda i: caller.images(run.sampling(i, steps=1)), repeats=C1_REPEATS)
    if one is None:
        return
    per_step = (full["p50_ms"] - one["p50_ms"]) / (steps - 1)
    entry = {"model": run.model.name, "steps": steps, "p50_steps_ms": full["p50_ms"], "p50_one_step_ms": one["p50_ms"]}
    entry |= {"per_step_ms": per_step, "partial": bool(full.get("partial") or one.get("partial"))}
    if replay is None:
        entry |= {"replay_ms": float("nan"), "replay": "no replay timed", "overhead_ms": float("nan")}
        run.report.add("skipped", {"model": run.model.name, "per_step": "overhead", "why": "no replay was timed"})
    else:
        entry |= {"replay_ms": replay[0], "replay": replay[1], "overhead_ms": per_step - replay[0]}
    run.report.add("per_step", entry)


async def replica_row(run: ModelRun, folder: EngineFolder, server, repository: Path) -> None:
    """The replica's loop calling Triton at every step, c=1: its engine models loaded now, on a NumPy the stub reads.

    The loop model's stub keeps the machine's NumPy (it reads tensors by DLPack); these stubs read ``as_numpy``,
    which Triton 2.51's stub misreads under NumPy 2: :data:`GpuBenchSettings.stub_numpy` is put first on their path.
    """
    from serve.models.served import triton_specs
    from serve.text_to_image.generation import Generation
    from serve.text_to_image.pipeline import TextToImagePipeline
    from serve.text_to_image.spec import TRANSFORMER, UNET, VAE_DECODER
    from serve.triton.client import TritonClient
    from serve.triton.repository import write_python_paths
    from serve.triton.runners import model_runner, replica_runner

    if not run.engine_models_may_run(REPLICA_LOOP):
        return
    named = triton_specs(folder, run.prefix)
    engines = [spec for engine, spec in named.items() if engine.startswith("text_encoder")]
    engines += [named[engine] for engine in (UNET, TRANSFORMER, VAE_DECODER) if engine in named]
    with first_on_path(run.settings.stub_numpy):
        write_python_paths(repository)  # read by each model.py as its stub starts
    try:
        for spec in engines:
            server.reload(spec.name)
    except Exception as error:  # noqa: BLE001 - this row's failure is recorded; the run goes on
        logger.exception("loading the engine models failed")
        entry = {"model": run.model.name, "method": REPLICA_LOOP, "concurrency": 1}
        run.report.add("failed", entry | {"error": f"{type(error).__name__}: {error}"[:2000]})
        return
    client = TritonClient(server.endpoints.grpc_url)
    replica = TextToImagePipeline(folder, model_runner(replica_runner(client), run.prefix))
    try:
        await run.timed(REPLICA_LOOP, 1, lambda i: replica.generate(Generation(run.sampling(i))))
    finally:
        await client.close()
