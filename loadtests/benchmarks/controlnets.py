"""``easel bench controlnet``: what a ControlNet adds per denoising step, and whether mixed requests still merge.

On one embedded model with two random ControlNets made for it (``random_controls.make_controlnet``):

* **engines, in-process** (ONNX Runtime, one core, the stack paused), ms per row at one batch size: the plain UNet,
  the ControlNet-ready UNet with zero residuals (a row without control) and with residuals, the ControlNet engine;
  the bytes of one row's residuals (what a ControlNet-ready UNet call carries per row, zeros or not); each engine's
  weights and activation bytes per row (measured at build, ``memory.json``).
* **served** (the stack with both ControlNets): images/s and latency at a concurrency with every request plain,
  every request with a ControlNet, and half and half (alternating ControlNets), with the rows per execution Triton
  formed for the UNet and the ControlNets: whether plain and controlled requests share UNet executions (Triton's
  counts include its one-row canary calls, every 10 s per model).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from build_engines.text_to_image.build import build
from build_engines.text_to_image.random_controls import make_controlnet
from loadtests.benchmarks import loop
from serve.paths import run_dir
from serve.stack import scratch_stack
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.spec import CONTROLNET_PREFIX, RESIDUAL_PREFIX, UNET
from serve.triton.onnx_backend import ShardedSession

logger = logging.getLogger(__name__)

PROMPT = "a lighthouse on a cliff"
NAMES = ("edges", "depth")


def make_controlnets(model_dir: Path, folder: Path) -> dict[str, Path]:
    """Two random ControlNets for ``model_dir`` in ``folder`` (kept between runs)."""
    made = {}
    for seed, name in enumerate(NAMES):
        path = folder / name
        made[name] = path if (path / "config.json").exists() else make_controlnet(model_dir, path, seed=seed)
    return made


def _feeds(spec, batch: int, latent: int, rng: np.random.Generator, residuals: bool = True) -> dict:
    feeds = {}
    for tensor in spec.graph_inputs:
        shape = (batch, *tensor.shape(latent))
        values = rng.random(shape) * 999 if tensor.name == "timestep" else rng.standard_normal(shape)
        if tensor.name.startswith(RESIDUAL_PREFIX) and not residuals:
            values = np.zeros(shape)
        feeds[tensor.name] = values.astype(tensor.numpy_dtype)
    return feeds


def engine_costs(plain: EngineFolder, ready: EngineFolder, settings: loop.ServedComparison, rounds: int = 5) -> dict:
    """Ms per row in-process (one core, the same rows, settings in turns, medians), and bytes per row."""
    latent = settings.size // plain.family.dims.vae_scale_factor
    rng = np.random.default_rng(0)
    batch = settings.batch
    unet, ready_unet = plain.specs[UNET], ready.specs[UNET]
    control = ready.specs[f"{CONTROLNET_PREFIX}{NAMES[0]}"]
    sessions = {
        "plain UNet": (ShardedSession(plain.engine(UNET).onnx, 1), _feeds(unet, batch, latent, rng)),
        "ControlNet-ready UNet, zero residuals": (
            ShardedSession(ready.engine(UNET).onnx, 1),
            _feeds(ready_unet, batch, latent, rng, residuals=False),
        ),
        "ControlNet-ready UNet, residuals": (
            ShardedSession(ready.engine(UNET).onnx, 1),
            _feeds(ready_unet, batch, latent, rng),
        ),
        "ControlNet": (ShardedSession(ready.engine(control.name).onnx, 1), _feeds(control, batch, latent, rng)),
    }
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for round_ in range(rounds + 1):
        for label, (session, feeds) in sessions.items():
            started = time.perf_counter()
            session.run(feeds)
            if round_:  # round 0 warms up
                times[label].append((time.perf_counter() - started) / batch * 1000)
        logger.info("engine costs: round %d/%d", round_, rounds)
    residual_bytes = sum(
        int(np.prod(t.shape(latent))) * 4 for t in ready_unet.inputs if t.name.startswith(RESIDUAL_PREFIX)
    )
    return {
        "ms_per_row": {label: statistics.median(values) for label, values in times.items()},
        "residual_bytes_per_row": residual_bytes,
        "sample_bytes_per_row": int(np.prod(unet.input("sample").shape(latent))) * 4,
    }


def _memory(ready: EngineFolder, latent: int) -> dict:
    """Each engine's weights and one row's activations at ``latent``, as measured at build."""
    memory = {}
    for name, model in ready.memory_models.items():
        if name == UNET or name.startswith(CONTROLNET_PREFIX):
            row = model.per_row(ready.specs[name].positions(latent))
            memory[name] = {"weights_mib": model.weights_bytes / 2**20, "row_mib": row / 2**20}
    return memory


def _control_image(size: int) -> str:
    pixels = ((np.random.default_rng(7).random((size, size, 3)) > 0.85) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def served(api_url: str, triton_http_url: str, settings: loop.ServedComparison) -> dict:
    """Throughput per condition, with the rows per execution of the UNet and the ControlNets."""
    image = _control_image(settings.size)
    size = f"{settings.size}x{settings.size}"

    def body(index: int, controlled: bool) -> dict:
        base = {"prompt": PROMPT, "seed": index, "size": size, "num_inference_steps": settings.steps}
        return base | ({"controlnets": [{"name": NAMES[index // 2 % 2], "image": image}]} if controlled else {})

    # Controlled requests alternate the two ControlNets; half and half: every other request is plain.
    conditions = {"plain": lambda i: False, "each with a ControlNet": lambda i: True, "half and half": lambda i: i % 2}
    models = [UNET, *(f"{CONTROLNET_PREFIX}{name}" for name in NAMES)]

    async def run() -> dict:
        limits = httpx.Limits(max_connections=settings.concurrency)
        async with httpx.AsyncClient(base_url=api_url, timeout=600, limits=limits) as client:

            async def once(index: int, controlled: bool) -> None:
                response = await client.post("/v1/images/generations", json=body(index, controlled))
                response.raise_for_status()

            await once(0, True)  # warm the engines
            rows, batching = [], {}
            for label, controlled in conditions.items():

                async def call(index: int, controlled=controlled) -> None:
                    await once(index, bool(controlled(index)))

                before = {model: loop.triton_counts(triton_http_url, model) for model in models}
                rows.append(await loop.measure(label, call, settings.concurrency, settings.requests))
                after = {model: loop.triton_counts(triton_http_url, model) for model in models}
                batching[label] = {
                    model: (after[model][0] - before[model][0]) / max(1, after[model][1] - before[model][1])
                    for model in models
                    if after[model][1] > before[model][1]
                }
            return {"rows": rows, "rows_per_execution": batching}

    return asyncio.run(run())


def run_controlnet_benchmark(model_dir: Path, label: str, settings: loop.ServedComparison, out: Path) -> str:
    """The ControlNet benchmark on ``model_dir``: engines in-process, then served. Writes JSON, returns the report."""
    folder = run_dir() / "bench"
    controlnets = make_controlnets(model_dir, folder / f"controlnets-{label}")
    plain = build(model_dir, folder / "plain_repository")
    report: dict = {"settings": asdict(settings), "model": label}
    with scratch_stack(model_dir, controlnets=controlnets) as running:
        ready = EngineFolder(running.info.engine_dir)
        with running.paused():
            report["engines"] = engine_costs(plain, ready, settings)
        report["memory"] = _memory(ready, settings.size // ready.family.dims.vae_scale_factor)
        result = served(running.info.api_url, running.info.triton_http_url, settings)
    rows = result.pop("rows")
    report["rows_per_execution"] = result["rows_per_execution"]
    loop.write_json(out, rows, **report)
    return "\n".join([loop.format_table(rows, "img"), *_lines(report), f"written to {out}"])


def _lines(report: dict) -> list[str]:
    engines, memory = report["engines"], report["memory"]
    costs = engines["ms_per_row"]
    added = costs["ControlNet"] + costs["ControlNet-ready UNet, residuals"] - costs["plain UNet"]
    lines = [
        f"ms/row in-process at batch {report['settings']['batch']}, {report['settings']['size']} px: "
        + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()),
        f"a ControlNet adds per step and row: {added:.2f} ms ({added / costs['plain UNet']:.0%} of the plain UNet); "
        f"a row without control on a ControlNet-ready UNet: "
        f"{costs['ControlNet-ready UNet, zero residuals'] / costs['plain UNet']:.2f}x the plain UNet",
        f"residuals per row: {engines['residual_bytes_per_row'] / 2**10:.0f} KiB "
        f"({engines['residual_bytes_per_row'] / engines['sample_bytes_per_row']:.1f}x the latents)",
        "memory (build's measurement): "
        + ", ".join(f"{n} weights {m['weights_mib']:.1f} MiB, row {m['row_mib']:.1f} MiB" for n, m in memory.items()),
    ]
    for condition, models in report["rows_per_execution"].items():
        lines.append(f"rows per execution, {condition}: " + ", ".join(f"{m} {v:.1f}" for m, v in models.items()))
    return lines
