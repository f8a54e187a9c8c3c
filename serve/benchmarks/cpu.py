"""``easel bench cpu``: one model on this CPU, every way users run it, side by side: one table, one JSON.

Columns (each on the same weights): diffusers on PyTorch (fp32, bf16 autocast); ``openvino_genai``'s
``Text2ImagePipeline`` (the engine behind OpenVINO Model Server's images route) on the same weights exported with
``optimum-cli export openvino``, run by its own virtual environment's Python (:mod:`serve.benchmarks.genai_worker`);
and Easel, built and served with each runtime and precision. Rows: one UNet row, one VAE decode (each engine alone,
as its Triton model runs it), and whole images end to end (LCM 4 steps, DDIM 20 steps guided). Each cell is timed at
concurrency 1 and 4: the p50 seconds per call (or image), images per second, and the peak memory of this process and
what it started. A cell that cannot run here says why instead of a number.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serve.benchmarks.model import TreeMemory
from serve.tables import text_table

logger = logging.getLogger(__name__)

PROMPT = "a lighthouse on a cliff at dusk, flat vector illustration"


@dataclass(frozen=True)
class Column:
    """One way of running the model: ``kind`` is diffusers, genai or easel."""

    kind: str
    precision: str = "fp32"
    runtime: str = ""  # Easel's runtime


COLUMNS = {
    "diffusers-fp32": Column("diffusers"),
    "diffusers-bf16": Column("diffusers", "bf16"),
    "genai-fp32": Column("genai"),
    "genai-bf16": Column("genai", "bf16"),
    "genai-int8": Column("genai", "int8"),
    "easel-onnxruntime-fp32": Column("easel", "fp32", "onnxruntime"),
    "easel-openvino-fp32": Column("easel", "fp32", "openvino"),
    "easel-openvino-bf16": Column("easel", "bf16", "openvino"),
    "easel-openvino-int8": Column("easel", "int8", "openvino"),
}


@dataclass(frozen=True)
class Row:
    """What one cell times: an engine alone (``engine``), or whole images (``steps`` of ``scheduler``)."""

    title: str
    engine: str = ""
    steps: int = 0
    scheduler: str = ""
    guidance: float = 1.0


ROWS = {
    "unet": Row("one UNet row", engine="unet"),
    "vae": Row("one VAE decode", engine="vae_decoder"),
    "lcm4": Row("LCM 4 steps, end to end", steps=4, scheduler="lcm", guidance=1.0),
    "ddim20": Row("DDIM 20 steps guided, end to end", steps=20, scheduler="ddim", guidance=7.5),
}


@dataclass
class Cell:
    """One column x row x concurrency: its timings, or why it did not run."""

    column: str
    row: str
    concurrency: int
    p50_s: float | None = None
    images_per_s: float | None = None
    peak_gb: float | None = None
    seconds: list[float] = field(default_factory=list)
    load: str = ""  # /proc/loadavg when the cell ended: other jobs on the machine
    note: str = ""


@dataclass(frozen=True)
class CpuBenchSettings:
    """What ``easel bench cpu`` runs: which columns, rows, concurrencies, at what size, how many times."""

    model_dir: Path
    size: int = 512
    columns: tuple[str, ...] = tuple(COLUMNS)
    rows: tuple[str, ...] = tuple(ROWS)
    concurrency: tuple[int, ...] = (1, 4)
    repeats: int = 3
    genai_python: Path | None = None  # a Python with openvino_genai (and optimum-cli beside it); None: skipped


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``call`` after one warm-up call."""
    call()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def cell_from(column: str, row: str, concurrency: int, seconds: list[float], images: int, peak_gb: float) -> Cell:
    """A cell from per-call seconds, each call giving ``images`` images (or rows)."""
    p50 = statistics.median(seconds)
    return Cell(column, row, concurrency, round(p50, 3), round(images / p50, 4), round(peak_gb, 2), seconds)


def run_column(name: str, settings: CpuBenchSettings, out_dir: Path) -> list[Cell]:
    """Every asked cell of column ``name``; a column that fails leaves cells that say why."""
    from serve.benchmarks import cpu_columns

    column = COLUMNS[name]
    runner = {"diffusers": cpu_columns.diffusers_cells, "genai": cpu_columns.genai_cells}.get(
        column.kind, cpu_columns.easel_cells
    )
    try:
        with TreeMemory() as memory:
            cells = runner(name, column, settings, memory, out_dir)
    except Exception as error:  # noqa: BLE001 - a column that cannot run here is reported, the others still run
        logger.exception("column %s failed", name)
        why = f"failed: {error}"[:300]
        cells = [Cell(name, row, c, note=why) for row in settings.rows for c in settings.concurrency]
    for cell in cells:
        cell.load = cell.load or load_average()
        logger.info("%s", cell)
    return cells


def run_cpu_benchmark(settings: CpuBenchSettings, out: Path) -> str:
    """Run the columns one after the other (each alone on the machine); write JSON to ``out``; the table back."""
    cells = []
    for name in settings.columns:
        cells += run_column(name, settings, out.parent)
        write(out, settings, cells)  # what ran so far survives a later column's crash
    return "\n".join([table(cells), f"written to {out}"])


def write(out: Path, settings: CpuBenchSettings, cells: list[Cell]) -> None:
    """The settings and every cell as JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    context = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    out.write_text(json.dumps({"settings": context, "cells": [asdict(c) for c in cells]}, indent=2))


def table(cells: list[Cell]) -> str:
    """One line per cell: row, concurrency, column, p50, images/s, peak memory, load, note."""
    columns = [("row", "<10"), ("c", ">3"), ("  column", "<26"), ("p50 s", ">10"), ("img/s", ">10")]
    columns += [("peak GB", ">9"), ("  load", "<18"), ("note", "")]

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else f"{value:{spec}}"

    order = {name: i for i, name in enumerate(ROWS)}
    lines = []
    for c in sorted(cells, key=lambda c: (order.get(c.row, 99), c.concurrency)):
        p50, rate, peak = number(c.p50_s, ".2f"), number(c.images_per_s, ".4f"), number(c.peak_gb, ".2f")
        lines.append((c.row, c.concurrency, f"  {c.column}", p50, rate, peak, f"  {c.load}", c.note[:90]))
    return text_table(columns, lines)


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
