"""``easel bench jobs``: high-priority background jobs on an idle stack and on a stack saturated by normal ones.

The same high-priority job (its own seed each time) is submitted one at a time and timed from submission to
``succeeded`` (polling every 20 ms): first on the idle stack, then while normal-priority jobs keep every runner slot
busy and more wait in the queue. The ratio of the two p50s is what priority buys: with it, the high job starts at
once and the normal jobs hold their steps while it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from serve.tables import text_table

logger = logging.getLogger(__name__)

POLL_S = 0.02


@dataclass(frozen=True)
class JobSettings:
    """What the benchmark sends."""

    size: int = 64
    steps: int = 20
    high_jobs: int = 10
    normal_jobs: int = 24
    normal_steps: int = 150


@dataclass(frozen=True)
class JobRow:
    """High-priority job latency under one condition."""

    condition: str
    jobs: int
    p50_s: float
    p95_s: float
    normal_running: int
    normal_queued: int


def _body(settings: JobSettings, seed: int, priority: str, steps: int) -> dict:
    size = f"{settings.size}x{settings.size}"
    return {"prompt": "a red heart icon", "size": size, "num_inference_steps": steps, "seed": seed,
            "priority": priority, "background": True}  # fmt: skip


def _run_one(api: httpx.Client, body: dict, timeout_s: float = 600) -> float:
    """Submit a job and wait for it; seconds from submission to succeeded."""
    started = time.perf_counter()
    job = api.post("/v1/images/generations", json=body).json()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = api.get(f"/v1/jobs/{job['id']}").json()["status"]
        if status == "succeeded":
            return time.perf_counter() - started
        if status in ("failed", "canceled"):
            raise RuntimeError(f"job {job['id']} {status}")
        time.sleep(POLL_S)
    raise TimeoutError(f"job {job['id']} not done after {timeout_s:.0f} s")


def _high_jobs(api: httpx.Client, settings: JobSettings, first_seed: int, condition: str) -> JobRow:
    latencies = []
    counts = {"running": [], "queued": []}
    for i in range(settings.high_jobs):
        for status in counts:
            page = api.get("/v1/jobs", params={"status": status, "limit": 100}).json()["data"]
            counts[status].append(sum(1 for job in page if job["priority"] == "normal"))
        latencies.append(_run_one(api, _body(settings, first_seed + i, "high", settings.steps)))
        logger.info("%s: high-priority job %d took %.2f s", condition, i + 1, latencies[-1])
    return JobRow(
        condition,
        len(latencies),
        round(float(np.percentile(latencies, 50)), 3),
        round(float(np.percentile(latencies, 95)), 3),
        int(np.median(counts["running"])),
        int(np.median(counts["queued"])),
    )


def bench_priority(api_url: str, settings: JobSettings) -> tuple[list[JobRow], float]:
    """High-priority job latency idle and saturated; the rows and the saturated / idle ratio of the p50s."""
    with httpx.Client(base_url=api_url, timeout=60) as api:
        _run_one(api, _body(settings, 0, "high", settings.steps))  # warm-up
        idle = _high_jobs(api, settings, 1000, "idle stack")
        normal = [
            api.post("/v1/images/generations", json=_body(settings, 2000 + i, "normal", settings.normal_steps)).json()
            for i in range(settings.normal_jobs)
        ]
        time.sleep(2.0)  # the runners claim their slots' worth of normal jobs
        try:
            saturated = _high_jobs(api, settings, 3000, "saturated by normal jobs")
        finally:
            for job in normal:
                api.post(f"/v1/jobs/{job['id']}/cancel")
    return [idle, saturated], round(saturated.p50_s / idle.p50_s, 3)


def format_rows(rows: list[JobRow], ratio: float) -> str:
    """The table the command prints."""
    columns = [("condition", "<28"), ("high jobs", ">10"), ("p50 s", ">9.3f"), ("p95 s", ">9.3f")]
    columns += [("normal running", ">16"), ("normal queued", ">15")]
    cells = [(r.condition, r.jobs, r.p50_s, r.p95_s, r.normal_running, r.normal_queued) for r in rows]
    return f"{text_table(columns, cells)}\nhigh-priority p50, saturated / idle: {ratio:.2f}x"


def run_benchmark(settings: JobSettings, out: Path) -> str:
    """``easel bench jobs``: a scratch stack, the two conditions; JSON to ``out``, the table back."""
    import json

    from serve.stack import scratch_stack

    with scratch_stack() as stack:
        rows, ratio = bench_priority(stack.info.api_url, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"settings": asdict(settings), "rows": [asdict(r) for r in rows], "ratio": ratio}, indent=2)
    )
    return format_rows(rows, ratio) + f"\nwritten to {out}"
