"""``easel bench cpu``: one model on this CPU, every way users run it, side by side: one table, one JSON.

Columns (each on the same weights): diffusers on PyTorch (fp32, bf16 autocast); ``openvino_genai``'s
``Text2ImagePipeline`` (the engine behind OpenVINO Model Server's images route) on the same weights exported with
``optimum-cli export openvino``, run by its own virtual environment's Python (:mod:`loadtests.benchmarks.genai_worker`);
and Easel, built and served with each runtime and precision. Rows: one UNet row, one VAE decode (each engine alone,
as its Triton model runs it), and whole images end to end (LCM 4 steps, DDIM 20 steps guided). Each cell is timed at
concurrency 1 and 4: the p50 seconds per call (or image), images per second, and the peak memory of this process and
what it started. A cell that cannot run here says why instead of a number.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from loadtests.benchmarks import cpu_columns
from loadtests.benchmarks.cpu_cells import COLUMNS, ROWS, Cell, CpuBenchSettings, load_average
from loadtests.benchmarks.model import TreeMemory
from serve.tables import text_table

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "ROWS", "CpuBenchSettings", "run_cpu_benchmark"]


def run_column(name: str, settings: CpuBenchSettings, out_dir: Path) -> list[Cell]:
    """Every asked cell of column ``name``; a column that fails leaves cells that say why."""
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
