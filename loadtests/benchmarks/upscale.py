"""``easel bench upscale``: an upscaler by tiles (its ONNX engine, in-process) against PyTorch on the whole image.

Real-ESRGAN x4plus's full size (RRDBNet, 23 blocks, random weights: nothing downloaded) is exported as the stack
exports it and run as the stack runs it: fixed tiles through the one runner chain (the tiles of concurrent upscales
merged into one call, as Triton's batcher merges them). Each size is upscaled at concurrency 1 and 4: seconds,
tiles per second and the process's peak memory; beside it, the PyTorch module on the whole image, same weights.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loadtests.benchmarks import loop
from serve.finishing.upscalers import OVERLAP, TILE, UpscalerEntry, upscale_pixels
from serve.tables import text_table
from serve.triton.memory import peak_rss_reset, rss_bytes
from serve.triton.onnx_backend import make_session
from serve.triton.runners import replica_runner
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpscaleRow:
    """One size: the tiled engine at concurrency 1 and 4, and PyTorch on the whole image."""

    side: int
    tiles: int
    tiled_s: float
    tiles_per_s: float
    tiled_peak_gib: float
    concurrent4_s: float
    concurrent4_tiles_per_s: float
    concurrent4_peak_gib: float
    torch_whole_s: float | None
    torch_whole_peak_gib: float | None
    psnr_db: float | None


class _SessionRunner:
    """An :class:`~serve.triton.spec.EngineRunner` over one ONNX Runtime session (what Triton's stub runs)."""

    def __init__(self, onnx_path: Path) -> None:
        self.session = make_session(onnx_path)

    async def infer(self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0) -> dict:
        outputs = await asyncio.to_thread(self.session.run, None, dict(inputs))
        return {"upscaled": outputs[0]}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _timed(call):
    peak_rss_reset()
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started, rss_bytes(peak=True) / 2**30


def measure(module: torch.nn.Module, onnx_path: Path, side: int, whole: bool) -> UpscaleRow:
    """Upscale a ``side`` square by tiles (1, then 4 at once) and, if ``whole``, with PyTorch on the whole image."""
    entry = UpscalerEntry("bench", str(onnx_path), architecture="RRDBNet", scale=4, tile=TILE)
    runner = replica_runner(_SessionRunner(onnx_path))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(4)]

    async def upscale(count: int) -> list[np.ndarray]:
        return await asyncio.gather(*(upscale_pixels(image, entry, 4, runner) for image in images[:count]))

    tiles = entry.tiling.count(side, side)
    (tiled,), seconds, peak = _timed(lambda: asyncio.run(upscale(1)))
    _, seconds4, peak4 = _timed(lambda: asyncio.run(upscale(4)))
    torch_s = torch_peak = quality = None
    if whole:
        tensor = torch.from_numpy(images[0]).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            out, torch_s, torch_peak = _timed(lambda: module(tensor)[0])
        reference = (out.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        quality = psnr(tiled, reference)
    row = UpscaleRow(
        side, tiles, seconds, tiles / seconds, peak, seconds4, 4 * tiles / seconds4, peak4, torch_s, torch_peak, quality
    )
    logger.info("%s", row)
    return row


def run(module: torch.nn.Module, onnx_path: Path, sides: list[int], whole_up_to: int, out: Path) -> str:
    """Measure each side, write JSON to ``out``, and return the table."""
    rows = [measure(module, onnx_path, side, side <= whole_up_to) for side in sides]
    loop.write_json(
        out, [], tile=TILE, overlap=OVERLAP, upscaler="RRDBNet x4 full size", sizes=[r.__dict__ for r in rows]
    )
    columns = [("input", ">7"), ("tiles", ">6"), ("tiled s", ">9.1f"), ("tiles/s", ">8.2f"), ("peak GiB", ">9.2f")]
    columns += [("x4 conc. s", ">11.1f"), ("tiles/s", ">8.2f"), ("peak GiB", ">9.2f")]
    columns += [("torch whole s", ">14"), ("peak GiB", ">9"), ("PSNR dB", ">8")]

    def shown(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    cells = [
        (f"{r.side}", r.tiles, r.tiled_s, r.tiles_per_s, r.tiled_peak_gib, r.concurrent4_s, r.concurrent4_tiles_per_s)
        + (r.concurrent4_peak_gib, shown(r.torch_whole_s, ".1f"), shown(r.torch_whole_peak_gib, ".2f"))
        + (shown(r.psnr_db, ".1f"),)
        for r in rows
    ]
    heading = f"Real-ESRGAN x4plus full size (random weights), x4, tiles of {TILE} with {OVERLAP} overlap"
    return "\n".join([heading, text_table(columns, cells), f"written to {out}"])
