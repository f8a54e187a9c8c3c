"""Measure an ONNX engine's memory (weights, activation bytes per row at a few sizes) and time per row; save both.

Each engine is measured in a fresh process (``python -m build_engines.memory``): a process that has exported or run
other models holds freed memory that new allocations reuse unseen, so its peaks would read low. The process runs the
engine exactly as the python backend serves it (its runtime, ONNX Runtime's arena off, the same allocator settings),
on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from serve.adapters.lora import SCALE_INPUT, LoraBanks, load_slots
from serve.text_to_image.spec import sampled_sides
from serve.triton.engine_files import EngineFiles
from serve.triton.environment import allocator_environment
from serve.triton.memory import MemoryModel, peak_rss_reset, rss_bytes
from serve.triton.spec import ModelSpec, TensorSpec

logger = logging.getLogger(__name__)

SIDES = (16, 32, 48, 64)
"""Reference sizes of the dynamic axes at which one row is measured (latent sides: the UNet, the VAE, ...)."""


def sides_up_to(native: int) -> tuple[int, ...]:
    """:data:`SIDES`, and for a model whose native latent side is larger, three quarters of it and itself.

    A fit through small sizes alone misses what grows late: SDXL's UNet row at its native 128x128 latents peaks at
    1.47 GB where a fit through 16-64 said 0.45 GB (its attention over 4096 tokens), so the sizes a model is used at
    are measured, not extrapolated to.
    """
    return SIDES if native <= SIDES[-1] else (*SIDES, native * 3 // 4, native)


def sampled_positions(spec: ModelSpec, side: int) -> int:
    """The positions of a row measured at reference ``side`` (a video's at :func:`sampled_sides`'s frames)."""
    first = next((t for t in spec.inputs if -1 in t.dims), spec.inputs[0])
    return spec.positions(*sampled_sides(first, side))


def dynamic_axes(spec: ModelSpec) -> tuple[int, ...]:
    """Axes (batch axis first, so 1-based) of the first input that has dynamic dims; () when none has."""
    for tensor in spec.inputs:
        axes = tuple(i + 1 for i, d in enumerate(tensor.dims) if d == -1)
        if axes:
            return axes
    return ()


def _row(spec: ModelSpec, side: int, rng: np.random.Generator, folder: Path) -> dict[str, np.ndarray]:
    feeds = {}
    for tensor in spec.graph_inputs:
        shape = (1, *tensor.shape(*sampled_sides(tensor, side)))
        if tensor.dtype.startswith("int"):
            feeds[tensor.name] = rng.integers(0, 300, shape).astype(tensor.numpy_dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(tensor.numpy_dtype)
    files = EngineFiles(folder)
    if files.lora_ready:  # a LoRA-ready engine, measured without adapters
        scale, bank, _ = LoraBanks(spec.name, load_slots(files.lora_slots), lambda _: {}, 1).feeds([()])
        feeds |= {SCALE_INPUT: scale, **bank}
    return feeds


def measure_here(model_path: Path, spec: ModelSpec, sides: tuple[int, ...] = SIDES) -> MemoryModel:
    """Measure in this process (call it in a fresh one: see the module docstring)."""
    from serve.triton.onnx_backend import open_engine

    rng = np.random.default_rng(0)
    files = EngineFiles(model_path.parent)
    used, peak_reset = _memory_probe(files)
    if files.torch_module.exists() and used is rss_bytes:  # what loading a module imports is not the engine's weights
        open_engine(files, threads=1)
        gc.collect()
    start = used()
    session = open_engine(files, threads=1)
    taken = session.input_names
    sides = sides if dynamic_axes(spec) else sides[:1]

    def row(side: int) -> dict[str, np.ndarray]:
        return {k: v for k, v in _row(spec, side, rng, model_path.parent).items() if k in taken}

    session.run(row(sides[0]))  # warm-up: lazy initialisation counts as weights
    weights = used() - start
    measured, timed = [], []
    for side in sides:
        feeds = row(side)
        before = used()
        peak_reset()
        started = time.perf_counter()
        session.run(feeds)
        seconds = time.perf_counter() - started
        positions = sampled_positions(spec, side)
        measured.append((positions, max(0, used(peak=True) - before)))
        timed.append((positions, seconds))
        logger.info(
            "%s: one row at %d positions peaks %.1f MiB, %.3f s", spec.name, positions, measured[-1][1] / 2**20, seconds
        )
    return MemoryModel.fit(weights, measured, timed)


def _memory_probe(files: EngineFiles):
    """How an engine's memory is read: (bytes in use, ``peak=True`` the peak since the reset; reset the peak).

    The process's resident memory, or for a torch engine on a GPU the GPU memory PyTorch holds.
    """
    from serve.triton.runtimes import Runtime, RuntimeChoice, gpu_present

    if RuntimeChoice.of(files).runtime is not Runtime.TORCH or not gpu_present():
        return rss_bytes, peak_rss_reset
    import torch

    def used(peak: bool = False) -> int:
        return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()

    return used, torch.cuda.reset_peak_memory_stats


def save(model: MemoryModel, path: Path) -> None:
    """Write ``model`` as JSON (read by :meth:`MemoryModel.load`)."""
    path.write_text(json.dumps(dataclasses.asdict(model), indent=2))


def measured(files: EngineFiles, spec: ModelSpec, sides: tuple[int, ...] = SIDES) -> bool:
    """Whether the engine's memory and time per row were measured up to the largest of ``sides``.

    Engines measured before times were, or at smaller sizes only, are measured again.
    """
    if not files.memory.exists():
        return False
    model = MemoryModel.load(files.memory)
    largest = sampled_positions(spec, max(sides)) if dynamic_axes(spec) else 1
    return model.seconds is not None and max(p for p, _ in model.measured) >= largest


def measure(engine_folder: Path, spec: ModelSpec, sides: tuple[int, ...] = SIDES) -> MemoryModel:
    """Measure ``engine_folder/model.onnx`` at ``sides`` in a fresh process and save ``memory.json`` beside it."""
    command = [
        sys.executable,
        "-m",
        "build_engines.memory",
        str(engine_folder),
        json.dumps(_spec_json(spec)),
        ",".join(map(str, sides)),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env=allocator_environment(), timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(f"measuring {spec.name} failed:\n{result.stderr[-2000:]}")
    model = MemoryModel.load(EngineFiles(engine_folder).memory)
    logger.info(
        "%s: weights %.1f MiB, one row at a 64 x 64 latent %.1f MiB",
        spec.name,
        model.weights_bytes / 2**20,
        model.per_row(spec.positions(64)) / 2**20,
    )
    return model


def _spec_json(spec: ModelSpec) -> dict:
    inputs = [[t.name, t.dtype, list(t.dims), list(t.axis_names), t.axis_scale] for t in spec.inputs]
    return {"name": spec.name, "inputs": inputs}


def _spec_from_json(raw: dict) -> ModelSpec:
    inputs = tuple(TensorSpec(n, kind, tuple(dims), tuple(axes), scale) for n, kind, dims, axes, scale in raw["inputs"])
    return ModelSpec(name=raw["name"], inputs=inputs, outputs=())


def main() -> None:
    """``python -m build_engines.memory ENGINE_FOLDER SPEC_JSON [SIDES]``: measure and write ``memory.json``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("spec")
    parser.add_argument("sides", nargs="?", default=",".join(map(str, SIDES)))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = EngineFiles(args.folder)
    sides = tuple(int(side) for side in args.sides.split(","))
    save(measure_here(files.onnx, _spec_from_json(json.loads(args.spec)), sides), files.memory)


if __name__ == "__main__":
    main()
