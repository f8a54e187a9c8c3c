"""``easel bench tiles``: how far a tiled VAE decode is from the whole image, at diffusers' tiles and smaller ones.

One image is generated in-process (ONNX Runtime engines, no stack) and its final latents are decoded whole, then in
diffusers' tiles and in each halving of them that admission may choose (:mod:`serve.text_to_image.tiling`); each
tiled image is compared with the whole one (PSNR, largest pixel difference) and timed, with the decode's peak memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtests.benchmarks import loop
from serve.tables import text_table
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.triton.memory import peak_rss_reset, rss_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileRow:
    """One decode of the same latents: its tile side (0: whole), distance to the whole image, time, memory."""

    tile_px: int
    tiles: int
    psnr_db: float
    max_abs_diff: int
    seconds: float
    peak_rss_gib: float


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _pixels(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0).transpose(0, 2, 3, 1) * 255).astype(np.uint8)


def measure(folder: EngineFolder, size: int, steps: int, seed: int) -> list[TileRow]:
    """Generate one ``size`` image and decode its latents whole and in every tiling, comparing each to the whole."""
    pipeline = TextToImagePipeline(folder, OnnxRuntimeRunner(folder, shards=1))
    kept = {}

    async def keep(step: int, total: int, latents: np.ndarray) -> None:
        kept["latents"] = latents

    job = Generation(SamplingParams("a lighthouse on a cliff, flat icon", "", 1, size, size, steps, 5.0, seed, "euler"))
    asyncio.run(pipeline.generate(job, on_step=keep))
    latents = kept["latents"]
    rows, whole = [], None
    for current in [None, *_tilings(folder, latents.shape[2:])]:
        peak_rss_reset()
        started = time.perf_counter()
        images = _pixels(asyncio.run(pipeline.decode(latents, current)))
        seconds = time.perf_counter() - started
        whole = images if current is None else whole
        side = 0 if current is None else current.sample_tile
        count = 1 if current is None else _count(current, latents.shape[2:])
        diff = int(np.abs(images.astype(int) - whole.astype(int)).max())
        rows.append(TileRow(side, count, psnr(images, whole), diff, round(seconds, 2), rss_bytes(peak=True) / 2**30))
        logger.info("%s", rows[-1])
    return rows


def _tilings(folder: EngineFolder, latent: tuple[int, int]):
    tiling = folder.tiling
    while tiling is not None and tiling.applies(*latent):
        yield tiling
        tiling = tiling.halved()


def _count(tiling, latent: tuple[int, int]) -> int:
    step = int(tiling.latent_tile * 0.75)
    return len(range(0, latent[0], step)) * len(range(0, latent[1], step))


def run(folder: EngineFolder, size: int, steps: int, seed: int, out: Path) -> str:
    """Measure, write JSON to ``out``, and return the table."""
    rows = measure(folder, size, steps, seed)
    loop.write_json(
        out, [], engines=str(folder.path), size=size, steps=steps, seed=seed, tilings=[r.__dict__ for r in rows]
    )
    columns = [("tile px", ">8"), ("tiles", ">7"), ("PSNR vs whole dB", ">18.1f"), ("max |diff|", ">12")]
    columns += [("decode s", ">10.2f"), ("peak RSS GiB", ">14.2f")]
    cells = [
        ("whole" if r.tile_px == 0 else str(r.tile_px), r.tiles, r.psnr_db, r.max_abs_diff, r.seconds, r.peak_rss_gib)
        for r in rows
    ]
    heading = f"{folder.family.name} at {size}x{size}, {steps} steps, seed {seed}"
    return "\n".join([heading, text_table(columns, cells), f"written to {out}"])
