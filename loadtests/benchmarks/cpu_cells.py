"""What ``easel bench cpu`` measures: its columns, rows and cells, and how a cell is timed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    """What one cell times: an engine alone (``engine``), or whole images (``steps`` of ``scheduler``).

    ``savings``: request fields of Easel's own savings, a row only Easel's columns run.
    """

    title: str
    engine: str = ""
    steps: int = 0
    scheduler: str = ""
    guidance: float = 1.0
    savings: tuple[tuple[str, object], ...] = ()


ROWS = {
    "unet": Row("one UNet row", engine="unet"),
    "vae": Row("one VAE decode", engine="vae_decoder"),
    "lcm4": Row("LCM 4 steps, end to end", steps=4, scheduler="lcm", guidance=1.0),
    "ddim20": Row("DDIM 20 steps guided, end to end", steps=20, scheduler="ddim", guidance=7.5),
    # judged equal to ddim20 by `easel bench speedups` (issue 33): 100 % / 100 % colour and recognisability
    "ddim20-cutoff": Row(
        "DDIM 20 steps guided, guidance cut off at half the steps (Easel's saving), end to end",
        steps=20,
        scheduler="ddim",
        guidance=7.5,
        savings=(("guidance_cutoff", 0.5),),
    ),
}

SAVINGS_ONLY = "Easel's own saving: this column runs the plain row (ddim20) instead"


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
