"""``easel bench upscale --served SIDE``: one x4 upscale through a running stack, Triton's memory sampled meanwhile.

A stack with the default memory budget serves Real-ESRGAN x4plus at full size (random weights, the community
file's layout) as ``--upscaler x4plus=FILE``; one SIDE x SIDE image is posted to ``POST /v1/images/upscale`` while
the resident memory of Triton's process tree (the server and its python-backend stubs, where the engines run) is
sampled every 0.2 s. What it shows: the tiles bound the engine's memory at any image size.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from loadtests.benchmarks import loop
from serve.finishing.upscalers import OVERLAP, TILE
from serve.stack import Stack, StackOptions
from serve.tables import text_table

logger = logging.getLogger(__name__)


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and its descendants (0 for those gone meanwhile)."""
    total = 0
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class Sampler(threading.Thread):
    """Samples :func:`tree_rss` of ``pid`` every ``interval_s`` until stopped; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak, self.samples = pid, interval_s, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop`."""
        while not self.done.wait(self.interval_s):
            self.peak = max(self.peak, tree_rss(self.pid))
            self.samples += 1

    def stop(self) -> int:
        """Stop sampling; the peak bytes seen."""
        self.done.set()
        self.join()
        return self.peak


def served_upscale(upscaler_file: Path, side: int, run_dir: Path, out: Path) -> str:
    """Start a stack serving ``upscaler_file`` as ``x4plus``, upscale one ``side`` square, write JSON; the table."""
    options = StackOptions(port=0, dashboard=False, run_dir=run_dir, cache_bytes=0, upscalers={"x4plus": upscaler_file})
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    body = {"image": base64.b64encode(buffer.getvalue()).decode(), "upscaler": "x4plus"}
    with Stack(options) as stack, httpx.Client(base_url=stack.info.api_url, timeout=3600) as client:
        pid = stack.triton.managed.pid
        idle = tree_rss(pid)
        sampler = Sampler(pid)
        sampler.start()
        started = time.perf_counter()
        answer = client.post("/v1/images/upscale", json=body)
        seconds = time.perf_counter() - started
        peak = sampler.stop()
        budget = stack.memory_budget_bytes
    answer.raise_for_status()
    size = answer.json()["size"]
    row = {
        "input": f"{side}x{side}",
        "output": size,
        "seconds": seconds,
        "triton_idle_gib": idle / 2**30,
        "triton_peak_gib": peak / 2**30,
        "growth_gib": (peak - idle) / 2**30,
        "budget_gib": budget / 2**30,
        "samples": sampler.samples,
    }
    loop.write_json(out, [], tile=TILE, overlap=OVERLAP, upscaler="RRDBNet x4 full size", served=row)
    columns = [("input", ">10"), ("output", ">10"), ("s", ">8.1f"), ("Triton idle GiB", ">16.2f")]
    columns += [("Triton peak GiB", ">16.2f"), ("growth GiB", ">11.2f"), ("budget GiB", ">11.2f")]
    cells = [tuple(row[key] for key in ("input", "output", "seconds", "triton_idle_gib", "triton_peak_gib"))]
    cells = [cells[0] + (row["growth_gib"], row["budget_gib"])]
    heading = f"Served x4 upscale, Real-ESRGAN x4plus full size (random weights), tiles of {TILE}, default budget"
    return "\n".join([heading, text_table(columns, cells), f"written to {out}"])
