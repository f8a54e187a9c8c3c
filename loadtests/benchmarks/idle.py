"""``easel bench idle``: what an idle stack costs, the CPU each of its processes uses while nothing is asked.

A scratch stack is started in this process, left to settle, then the CPU time (user + system) of this process and
every process it started is read at the start and the end of a window, summed by kind
(:func:`loadtests.benchmarks.loop.cpu_by_process`: a Ray actor's title, ``triton MODEL``, ``benchmark`` for this
process, which holds what ``easel up`` holds: Triton's supervisor, the GCS's keeper). A share is CPU seconds over the
window's seconds (100 % = one core).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests.benchmarks.loop import cpu_by_process
from serve.tables import text_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdleRow:
    """One kind of process of the idle stack (its processes summed)."""

    process: str
    cpu_percent: float  # of one core, over the window


def measure_idle(window_s: float) -> list[IdleRow]:
    """Each kind of process's CPU share over ``window_s`` seconds from now, busiest first."""
    before, start = cpu_by_process(), time.monotonic()
    time.sleep(window_s)
    after, elapsed = cpu_by_process(), time.monotonic() - start
    rows = [IdleRow(label, 100 * (cpu - before.get(label, 0.0)) / elapsed) for label, cpu in after.items()]
    return sorted(rows, key=lambda row: -row.cpu_percent)


def format_rows(rows: list[IdleRow], shown: int = 12) -> str:
    """The busiest ``shown`` kinds of process and the total."""
    columns = [("cpu % of a core", ">16.1f"), ("  process", "<40s")]
    table = text_table(columns, [(r.cpu_percent, f"  {r.process}") for r in rows[:shown]])
    return f"{table}\ntotal: {sum(r.cpu_percent for r in rows):.1f} % of a core"


def run_benchmark(settle_s: float, window_s: float, out: Path) -> str:
    """``easel bench idle``: a scratch stack, ``settle_s`` to settle, the ``window_s`` window; JSON to ``out``."""
    from serve.stack import scratch_stack

    with scratch_stack():
        logger.info("stack ready; settling %.0f s, then measuring %.0f s", settle_s, window_s)
        time.sleep(settle_s)
        rows = measure_idle(window_s)
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(r.cpu_percent for r in rows)
    out.write_text(
        json.dumps({"window_s": window_s, "total_percent": total, "rows": [asdict(r) for r in rows]}, indent=2)
    )
    return format_rows(rows) + f"\nwritten to {out}"
