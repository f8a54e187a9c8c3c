"""Closed-loop load at a fixed concurrency, latency percentiles, CPU time, tables and JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

from serve import tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    """One method at one concurrency."""

    method: str
    concurrency: int
    requests: int
    p50_ms: float
    p95_ms: float
    per_s: float
    cpu_s_per_request: float


@dataclass(frozen=True)
class ServedComparison:
    """The load of a benchmark that compares served conditions (adapters, ControlNets) and times engines in-process.

    Each request's steps and size; requests in flight at once and requests per condition; rows of the in-process
    engine timings.
    """

    steps: int = 10
    size: int = 128
    concurrency: int = 8
    requests: int = 24  # per served condition, after a warm-up
    batch: int = 8  # rows of the in-process timings


def triton_counts(triton_http_url: str, model: str) -> tuple[int, int]:
    """Triton's inference and execution counts of ``model`` so far (their ratio over a span: rows per execution)."""
    stats = httpx.get(f"{triton_http_url}/v2/models/{model}/stats").json()["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


@dataclass(frozen=True)
class Call:
    """One call of a closed loop: the slot that ran it and when it started and ended (``perf_counter`` s)."""

    slot: int
    started: float
    ended: float

    @property
    def latency_s(self) -> float:
        """Seconds from start to end."""
        return self.ended - self.started


async def run_closed_loop(call: Callable[[int], Awaitable[None]], concurrency: int, total: int) -> tuple[list, float]:
    """``total`` calls from ``concurrency`` slots, each slot calling again as soon as its call returns.

    Returns the :class:`Call` records and the wall time.
    """
    calls: list[Call] = []
    indices = iter(range(total))

    async def slot(number: int) -> None:
        for index in indices:
            started = time.perf_counter()
            await call(index)
            calls.append(Call(number, started, time.perf_counter()))

    started = time.perf_counter()
    await asyncio.gather(*(slot(number) for number in range(concurrency)))
    return calls, time.perf_counter() - started


def steady_rate(calls: list[Call], concurrency: int) -> float:
    """Calls/s while all ``concurrency`` slots were busy, i.e. without the closed loop's drain.

    Once the last call has started, slots fall idle one by one and fewer than ``concurrency`` calls are in flight.
    Every call but each slot's last ended before that moment, so each slot's rate over those calls (their count over
    the time from its first start to their last end) is a rate at full concurrency; the mean over slots times
    ``concurrency`` is the total. Needs a slot that ran at least two calls.
    """
    rates = []
    for number in {c.slot for c in calls}:
        done = sorted((c for c in calls if c.slot == number), key=lambda c: c.started)[:-1]
        if done:
            rates.append(len(done) / (done[-1].ended - done[0].started))
    if not rates:
        raise ValueError("a steady rate needs at least two calls per slot")
    return float(np.mean(rates)) * concurrency


async def measure(method: str, call, concurrency: int, total: int, warmup: int | None = None) -> BenchRow:
    """Warm up, then time ``total`` calls at ``concurrency``; CPU is the whole machine's busy time."""
    await run_closed_loop(call, concurrency, concurrency if warmup is None else warmup)
    before = busy_s()
    calls, wall = await run_closed_loop(call, concurrency, total)
    return make_row(method, concurrency, [c.latency_s for c in calls], wall, busy_s() - before)


def make_row(method: str, concurrency: int, latencies: list[float], wall_s: float, cpu_s: float) -> BenchRow:
    """A row from per-call latencies (s), the wall time they took and the machine's busy CPU seconds; logged."""
    ms = np.asarray(latencies) * 1000
    row = BenchRow(
        method,
        concurrency,
        len(ms),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 95)),
        len(ms) / wall_s,
        cpu_s / len(ms),
    )
    logger.info(
        "%-14s c=%-3d p50 %8.1f ms  p95 %8.1f ms  %6.2f/s  %.3f CPU-s/req",
        method,
        concurrency,
        row.p50_ms,
        row.p95_ms,
        row.per_s,
        row.cpu_s_per_request,
    )
    return row


def busy_s() -> float:
    """CPU seconds the whole machine has been busy, all cores; ``nice`` counts too (Ray runs its workers niced)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def cpu_by_process() -> dict[str, float]:
    """CPU seconds used so far by this process and every process it started, summed by :func:`process_label`."""
    totals: dict[str, float] = {}
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with suppress(psutil.Error):
            label = "benchmark" if process.pid == me.pid else process_label(process.cmdline())
            times = process.cpu_times()
            totals[label] = totals.get(label, 0.0) + times.user + times.system
    return totals


def process_label(cmdline: list[str]) -> str:
    """A short name for a process of the stack.

    A Ray actor's title (``ServeController``), ``triton MODEL`` for a python-backend model, else the script or
    program name (``raylet``, ``log_monitor.py``).
    """
    first = cmdline[0] if cmdline else "?"
    if first.startswith("ray::"):
        return first.split()[0].split(".")[0].removeprefix("ray::")
    if first.endswith("triton_python_backend_stub") and len(cmdline) > 1:
        return f"triton {Path(cmdline[1]).parent.parent.name}"
    return next((Path(arg).name for arg in cmdline if arg.endswith(".py")), Path(first).name)


def format_table(rows: list[BenchRow], unit: str) -> str:
    """A plain-text table of the rows; ``unit`` names what ``per_s`` counts."""
    width = max([16, *(len(r.method) + 2 for r in rows)])
    columns = [("method", f"<{width}"), ("conc", ">5"), ("reqs", ">6"), ("p50 ms", ">10.1f"), ("p95 ms", ">10.1f")]
    columns += [(f"{unit}/s", ">12.2f"), ("CPU-s/req", ">11.3f")]
    cells = [(r.method, r.concurrency, r.requests, r.p50_ms, r.p95_ms, r.per_s, r.cpu_s_per_request) for r in rows]
    return tables.text_table(columns, cells)


def write_json(path: Path, rows: list[BenchRow], **context) -> None:
    """Write the context and rows as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=2, default=str))
