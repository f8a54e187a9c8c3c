"""The columns of ``easel bench cpu`` (:mod:`loadtests.benchmarks.cpu`): diffusers, openvino_genai, Easel; by cell.

Each runner returns its cells for the settings' rows and concurrencies, timed the same way: engine rows as one call of
``concurrency`` rows, image rows as ``concurrency`` requests at once (diffusers, which has no server: one call of
``concurrency`` images).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from loadtests.benchmarks.cpu_cells import (
    PROMPT,
    ROWS,
    SAVINGS_ONLY,
    Cell,
    Column,
    CpuBenchSettings,
    Row,
    cell_from,
    timed,
)
from loadtests.benchmarks.model import TreeMemory
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)

GENAI_WORKER = Path(__file__).with_name("genai_worker.py")


def engine_feeds(spec: ModelSpec, side: int, rows: int) -> dict[str, np.ndarray]:
    """Random inputs for ``rows`` rows of an engine at latent side ``side`` (token ids where it takes them)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for tensor in spec.graph_inputs:
        shape = (rows, *tensor.shape(side))
        if tensor.dtype.startswith("int"):
            feeds[tensor.name] = rng.integers(0, 300, shape).astype(tensor.numpy_dtype)
        elif tensor.name == "timestep":
            feeds[tensor.name] = np.full(shape, 500, tensor.numpy_dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(tensor.numpy_dtype)
    return feeds


def _engine_cells(name: str, run_rows, settings: CpuBenchSettings, memory: TreeMemory, side: int) -> list[Cell]:
    """Engine rows: ``run_rows(row, concurrency)`` gives the call to time."""
    cells = []
    for row in (r for r in settings.rows if ROWS[r].engine):
        for concurrency in settings.concurrency:
            memory.reset()
            seconds = timed(run_rows(ROWS[row], concurrency), settings.repeats)
            cells.append(cell_from(name, row, concurrency, seconds, concurrency, memory.peak_gb))
    return cells


def easel_cells(name: str, column: Column, settings: CpuBenchSettings, memory: TreeMemory, out_dir: Path):
    """Easel built with the column's runtime and precision: engines as their Triton models run them, then served."""
    from build_engines.text_to_image.build import build
    from serve.stack import scratch_stack
    from serve.text_to_image.engine_folder import EngineFolder
    from serve.triton.onnx_backend import open_engine

    how = {"runtime": column.runtime, "precision": column.precision}
    folder: EngineFolder = build(settings.model_dir, repository=None, **how)
    side = settings.size // folder.family.dims.vae_scale_factor
    sessions = {}

    def run_rows(row: Row, concurrency: int):
        session = sessions.setdefault(row.engine, open_engine(folder.engine(row.engine)))
        feeds = engine_feeds(folder.specs[row.engine], side, concurrency)
        return lambda: session.run(feeds)

    cells = _engine_cells(name, run_rows, settings, memory, side)
    sessions.clear()
    image_rows = [r for r in settings.rows if ROWS[r].steps]
    if not image_rows:
        return cells
    with scratch_stack(settings.model_dir, folder=out_dir / f"stack-{name}", **how) as stack:
        _post(stack.info.api_url, _body(settings, ROWS["lcm4"], steps=1))  # warms the engines and the replica
        for row in image_rows:
            for concurrency in settings.concurrency:
                memory.reset()
                cells.append(_served_cell(name, row, concurrency, stack.info.api_url, settings, memory))
    return cells


def _body(settings: CpuBenchSettings, row: Row, steps: int | None = None) -> dict:
    size = f"{settings.size}x{settings.size}"
    steps = steps or row.steps
    body = {"prompt": PROMPT, "size": size, "num_inference_steps": steps, "guidance_scale": row.guidance, "seed": 1}
    return body | {"scheduler": row.scheduler} | dict(row.savings)


def _post(api_url: str, body: dict) -> float:
    started = time.perf_counter()
    response = httpx.post(f"{api_url}/v1/images/generations", json=body, timeout=7200)
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return time.perf_counter() - started


def _served_cell(name, row, concurrency, api_url, settings: CpuBenchSettings, memory: TreeMemory) -> Cell:
    """``repeats`` rounds of ``concurrency`` requests at once: p50 latency, images per second over the rounds."""
    body = _body(settings, ROWS[row])
    latencies, wall = [], 0.0
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(settings.repeats):
            started = time.perf_counter()
            latencies += list(pool.map(lambda _: _post(api_url, body), range(concurrency)))
            wall += time.perf_counter() - started
    cell = cell_from(name, row, concurrency, latencies, 1, memory.peak_gb)
    cell.images_per_s = round(concurrency * settings.repeats / wall, 4)
    return cell


def diffusers_cells(name: str, column: Column, settings: CpuBenchSettings, memory: TreeMemory, out_dir: Path):
    """The StableDiffusionPipeline of diffusers on PyTorch, fp32 or under bf16 autocast, every core."""
    import contextlib

    import torch
    from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

    from serve.triton.runtimes import cpu_count

    torch.set_num_threads(cpu_count())
    pipeline = StableDiffusionPipeline.from_pretrained(settings.model_dir, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if column.precision == "bf16" else contextlib.nullcontext
    )
    side = settings.size // pipeline.vae_scale_factor
    width = pipeline.text_encoder.config.hidden_size

    def run_rows(row: Row, concurrency: int):
        latent = torch.randn(concurrency, pipeline.unet.config.in_channels, side, side)

        def call():
            with torch.inference_mode(), autocast():
                if row.engine == "unet":
                    return pipeline.unet(latent, 500, torch.randn(concurrency, 77, width), return_dict=False)
                return pipeline.vae.decode(latent[:, : pipeline.vae.config.latent_channels], return_dict=False)

        return call

    cells = _engine_cells(name, run_rows, settings, memory, side) + _savings_cells(name, settings)
    schedulers = {"lcm": LCMScheduler, "ddim": DDIMScheduler}
    for row in (r for r in settings.rows if ROWS[r].steps and not ROWS[r].savings):
        spec = ROWS[row]
        pipeline.scheduler = schedulers[spec.scheduler].from_config(pipeline.scheduler.config)
        for concurrency in settings.concurrency:
            memory.reset()

            def generate(spec=spec, concurrency=concurrency):
                with torch.inference_mode(), autocast():
                    pipeline(PROMPT, height=settings.size, width=settings.size, num_inference_steps=spec.steps,
                             guidance_scale=spec.guidance, num_images_per_prompt=concurrency,
                             generator=torch.Generator().manual_seed(1))  # fmt: skip

            seconds = [timed_once(generate) for _ in range(settings.repeats)]
            cell = cell_from(name, row, concurrency, seconds, concurrency, memory.peak_gb)
            cell.note = "one call of c images (no server)" if concurrency > 1 else ""
            cells.append(cell)
    return cells


def _savings_cells(name: str, settings: CpuBenchSettings) -> list[Cell]:
    """The cells of the rows of Easel's own savings, which a column other than Easel's does not run."""
    return [Cell(name, r, c, note=SAVINGS_ONLY) for r in settings.rows if ROWS[r].savings for c in settings.concurrency]


def timed_once(call) -> float:
    """Seconds of one call."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def genai_cells(name: str, column: Column, settings: CpuBenchSettings, memory: TreeMemory, out_dir: Path):
    """openvino_genai's Text2ImagePipeline in ``settings.genai_python`` (its own venv), on optimum-cli's export."""
    cells = [
        Cell(name, row, c, note="openvino_genai runs whole pipelines only")
        for row in settings.rows
        if ROWS[row].engine
        for c in settings.concurrency
    ] + _savings_cells(name, settings)
    image_rows = [r for r in settings.rows if ROWS[r].steps and not ROWS[r].savings]
    python = settings.genai_python
    if python is None or not python.exists():
        why = "skipped: no Python with openvino_genai (--genai-python; docs/PERFORMANCE.md says how to set one up)"
        return cells + [Cell(name, r, c, note=why) for r in image_rows for c in settings.concurrency]
    if not image_rows:
        return cells
    weights = "int8" if column.precision == "int8" else "fp32"
    model = genai_export(settings, weights, out_dir / "genai")
    hint = "bf16" if column.precision == "bf16" else "f32"
    asked = [{"row": r, **_body(settings, ROWS[r]), "concurrency": c} for r in image_rows for c in settings.concurrency]
    request = {"model": str(model), "hint": hint, "repeats": settings.repeats, "cells": asked}
    memory.reset()
    result = subprocess.run(
        [str(python), str(GENAI_WORKER), json.dumps(request)], capture_output=True, text=True, timeout=7200
    )
    if result.returncode != 0:
        raise RuntimeError(f"openvino_genai's worker failed: {result.stderr[-600:]}")
    for line in result.stdout.splitlines():
        done = json.loads(line)
        cell = cell_from(name, done["row"], done["concurrency"], done["latencies"], 1, memory.peak_gb)
        cell.images_per_s = round(done["images"] / done["wall_s"], 4)
        cell.note = "one call of c images" if done["concurrency"] > 1 else ""
        cells.append(cell)
    return cells


def genai_export(settings: CpuBenchSettings, weights: str, cache: Path) -> Path:
    """The model exported for openvino_genai by ``optimum-cli export openvino`` (``weights``: fp32 or int8), cached."""
    folder = cache / f"{settings.model_dir.name}-{weights}"
    if (folder / "model_index.json").exists():
        return folder
    cli = settings.genai_python.parent / "optimum-cli"
    command = [str(cli), "export", "openvino", "--model", str(settings.model_dir), "--task", "text-to-image"]
    command += ["--weight-format", weights, str(folder)]
    logger.info("exporting for openvino_genai: %s", " ".join(command))
    subprocess.run(command, check=True, timeout=7200, capture_output=True, text=True)
    return folder
