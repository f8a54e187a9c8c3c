"""``easel bench idle``: what an idle stack costs, the CPU each of its processes uses while nothing is asked.

A scratch stack is started, left to settle, then every process's CPU time (user + system, from ``/proc`` through
psutil) is read at the start and the end of a window; a process's share is its CPU seconds over the window's seconds
(100 % = one core). The stack's own process (Triton's supervisor, the GCS's keeper) is the one ``easel up`` runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from serve.tables import text_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdleRow:
    """One process of the idle stack."""

    process: str
    pid: int
    cpu_percent: float  # of one core, over the window


def _cpu_seconds() -> dict[int, tuple[float, str]]:
    seen = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            times = process.cpu_times()
            name = " ".join(process.info["cmdline"] or [process.info["name"]])
        except psutil.Error:
            continue
        seen[process.pid] = (times.user + times.system, name[:70])
    return seen


def measure_idle(window_s: float) -> list[IdleRow]:
    """Each process's CPU share over ``window_s`` seconds from now, busiest first (those alive all along)."""
    before, start = _cpu_seconds(), time.monotonic()
    time.sleep(window_s)
    after, elapsed = _cpu_seconds(), time.monotonic() - start
    rows = [
        IdleRow(
            "this process (the stack's)" if pid == os.getpid() else name, pid, 100 * (cpu - before[pid][0]) / elapsed
        )
        for pid, (cpu, name) in after.items()
        if pid in before
    ]
    return sorted(rows, key=lambda row: -row.cpu_percent)


def format_rows(rows: list[IdleRow], shown: int = 12) -> str:
    """The busiest ``shown`` processes and the total."""
    columns = [("cpu % of a core", ">16.1f"), ("  pid", ">7d"), ("  process", "<72s")]
    table = text_table(columns, [(r.cpu_percent, r.pid, f"  {r.process}") for r in rows[:shown]])
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
