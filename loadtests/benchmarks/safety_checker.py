"""``easel bench safety-checker``: the image safety checker's cost per image, as the stack runs it.

SD 1.5's checker shape (CLIP ViT-L/14's vision tower, projection 768, 17 + 3 concepts; random weights: nothing is
downloaded, and the cost does not depend on them) is exported as the stack exports it and run as Triton's stub runs
it (:func:`serve.triton.onnx_backend.open_engine`: the batch in one-threaded slices, one per core). Each batch size
times 512x512 RGB images through the CLIP preprocessing (:class:`serve.moderation.images.Preprocessing`) and the
engine, ``repeats`` times (the median is kept).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loadtests.benchmarks import loop
from serve.moderation.images import Preprocessing
from serve.tables import text_table
from serve.triton.engine_files import EngineFiles
from serve.triton.memory import peak_rss_reset, rss_bytes
from serve.triton.onnx_backend import open_engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckerRow:
    """One batch size: milliseconds per image (preprocessing, engine, both) and the process's peak memory."""

    batch: int
    preprocess_ms: float
    engine_ms: float
    total_ms: float
    peak_gib: float


def measure(engine: EngineFiles, batch: int, side: int, repeats: int) -> CheckerRow:
    """Check ``batch`` random ``side`` x ``side`` images ``repeats`` times; the medians per image."""
    session = open_engine(engine)
    preprocessing = Preprocessing()
    images = [np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8) for i in range(batch)]
    session.run({"clip_input": np.stack([preprocessing.pixels(image) for image in images])})  # warm-up
    peak_rss_reset()
    prepare, run = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        pixels = np.stack([preprocessing.pixels(image) for image in images])
        prepared = time.perf_counter()
        session.run({"clip_input": pixels})
        prepare.append(prepared - started)
        run.append(time.perf_counter() - prepared)
    per_image = 1000 / batch
    row = CheckerRow(
        batch,
        statistics.median(prepare) * per_image,
        statistics.median(run) * per_image,
        statistics.median(a + b for a, b in zip(prepare, run, strict=True)) * per_image,
        rss_bytes(peak=True) / 2**30,
    )
    logger.info("%s", row)
    return row


def run(engine_dir: Path, batches: list[int], side: int, repeats: int, out: Path) -> str:
    """Measure each batch size, write JSON to ``out``, and return the table."""
    rows = [measure(EngineFiles(engine_dir), batch, side, repeats) for batch in batches]
    checker = "SD 1.5 shape (CLIP ViT-L/14 vision, random weights)"
    loop.write_json(out, [], checker=checker, side=side, repeats=repeats, batches=[asdict(row) for row in rows])
    columns = [("batch", ">6"), ("preprocess ms/img", ">18.1f"), ("engine ms/img", ">14.1f")]
    columns += [("total ms/img", ">13.1f"), ("peak GiB", ">9.2f")]
    cells = [(r.batch, r.preprocess_ms, r.engine_ms, r.total_ms, r.peak_gib) for r in rows]
    heading = f"Safety checker, SD 1.5's shape (random weights), {side}x{side} RGB in, ONNX Runtime as Triton's stub"
    return "\n".join([heading, text_table(columns, cells), f"written to {out}"])
