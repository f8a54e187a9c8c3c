"""``easel bench models``: several models in one stack: cold loads, and throughput spread over 1, 2 and 3 models.

Three embedded models (the default SD, a second SD made from it, the tiny SDXL) in scratch stacks:

- **cold loads**: a stack whose room for weights holds one model (``--model-weights``), so each request for another
  model unloads the loaded one and loads its own; per model, the load (``Easel-Model-Load-Seconds``) and the time to
  its first image, over ``cold_rounds`` rounds;
- **spread**: a stack with every model loaded; the same total load (``requests`` at ``concurrency``) sent to one
  model alone, then spread evenly over two and three: images per second, p50 and p95 latency, failures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from serve.tables import text_table

logger = logging.getLogger(__name__)

GENERATE = "/v1/images/generations"
LOAD_SECONDS = "Easel-Model-Load-Seconds"


@dataclass(frozen=True)
class ModelsSettings:
    """What the benchmark sends."""

    size: int = 64
    steps: int = 4
    requests: int = 48
    concurrency: int = 8
    cold_rounds: int = 3


@dataclass(frozen=True)
class ColdRow:
    """One model's cold loads."""

    model: str
    family: str
    weights_mib: float
    load_s: float  # median of the rounds
    first_image_s: float  # median: the cold request, sent to its answer


@dataclass(frozen=True)
class SpreadRow:
    """The same load over some of the models."""

    models: int
    images_per_s: float
    p50_s: float
    p95_s: float
    failed: int


def _body(settings: ModelsSettings, model: str, seed: int) -> dict:
    size = f"{settings.size}x{settings.size}"
    return {"prompt": "a red heart icon", "size": size, "num_inference_steps": settings.steps, "seed": seed,
            "model": model}  # fmt: skip


def bench_cold(api_url: str, models: dict[str, dict], settings: ModelsSettings) -> list[ColdRow]:
    """Each model asked in turn on a stack that holds one: every request after the first is a cold load."""
    loads: dict[str, list[float]] = {name: [] for name in models}
    firsts: dict[str, list[float]] = {name: [] for name in models}
    with httpx.Client(base_url=api_url, timeout=600) as api:
        for round_ in range(settings.cold_rounds):
            for name in models:
                started = time.perf_counter()
                response = api.post(GENERATE, json=_body(settings, name, round_))
                response.raise_for_status()
                if LOAD_SECONDS in response.headers:
                    loads[name].append(float(response.headers[LOAD_SECONDS]))
                    firsts[name].append(time.perf_counter() - started)
                logger.info("cold round %d, %s: %s s load", round_ + 1, name, response.headers.get(LOAD_SECONDS))
    return [
        ColdRow(
            name,
            listed["family"],
            round(listed["weights_bytes"] / 2**20, 1),
            round(float(np.median(loads[name])), 3) if loads[name] else float("nan"),
            round(float(np.median(firsts[name])), 3) if firsts[name] else float("nan"),
        )
        for name, listed in models.items()
    ]


def bench_spread(api_url: str, names: list[str], settings: ModelsSettings) -> list[SpreadRow]:
    """The same requests at the same concurrency over the first 1, 2, ... of ``names`` (round robin)."""
    rows = []
    for count in range(1, len(names) + 1):
        bodies = [_body(settings, names[i % count], 1000 + i) for i in range(settings.requests)]
        asyncio.run(_send(api_url, bodies[: settings.concurrency], settings.concurrency))  # every model warm
        elapsed, latencies, failed = asyncio.run(_send(api_url, bodies, settings.concurrency))
        done = len(latencies)
        rows.append(
            SpreadRow(
                count,
                round(done / elapsed, 3),
                round(float(np.percentile(latencies, 50)), 3) if latencies else float("nan"),
                round(float(np.percentile(latencies, 95)), 3) if latencies else float("nan"),
                failed,
            )
        )
        logger.info("spread over %d model(s): %s", count, rows[-1])
    return rows


async def _send(api_url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], int]:
    """``bodies`` posted with at most ``concurrency`` at once: wall seconds, each success's latency, failures."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failed = 0

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        nonlocal failed
        async with gate:
            started = time.perf_counter()
            try:
                response = await client.post(GENERATE, json=body)
            except httpx.HTTPError:
                failed += 1
                return
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failed += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=api_url, timeout=600) as client:
        await asyncio.gather(*(one(client, body) for body in bodies))
    return time.perf_counter() - started, latencies, failed


def format_rows(cold: list[ColdRow], spread: list[SpreadRow]) -> str:
    """The tables the command prints."""
    cold_columns = [("model", "<16"), ("family", "<8"), ("weights MiB", ">12.1f"), ("load s", ">9.3f")]
    cold_columns.append(("first image s", ">15.3f"))
    spread_columns = [("models", ">7"), ("images/s", ">10.3f"), ("p50 s", ">9.3f"), ("p95 s", ">9.3f")]
    spread_columns.append(("failed", ">8"))
    return "\n\n".join(
        [
            text_table(cold_columns, [(r.model, r.family, r.weights_mib, r.load_s, r.first_image_s) for r in cold]),
            text_table(spread_columns, [(r.models, r.images_per_s, r.p50_s, r.p95_s, r.failed) for r in spread]),
        ]
    )


def run_benchmark(settings: ModelsSettings, out: Path) -> str:
    """``easel bench models``: the three embedded models in two scratch stacks; JSON to ``out``, the tables back."""
    from build_engines.text_to_image.build import build, default_model_dir
    from build_engines.text_to_image.default_model import schedule_variant
    from serve.paths import run_dir
    from serve.settings import DEFAULT_MODEL
    from serve.stack import scratch_stack

    default = default_model_dir()
    folders = {
        DEFAULT_MODEL: None,
        "sd-second": schedule_variant(default, run_dir() / "bench" / "models" / "sd-second"),
        "tiny-xl": default_model_dir("tiny-xl"),
    }
    scratch = run_dir() / "bench" / "models" / "repository"
    weights = {name: build(folder, scratch).weights_bytes for name, folder in folders.items()}  # built once, here
    one_room = max(weights.values())
    with scratch_stack(models=folders, model_weights_bytes=one_room) as stack:
        listed = {m["id"]: m for m in httpx.get(f"{stack.info.api_url}/v1/models", timeout=30).json()["data"]}
        cold = bench_cold(stack.info.api_url, {n: listed[n] | {"weights_bytes": weights[n]} for n in folders}, settings)
    with scratch_stack(models=folders) as stack:
        spread = bench_spread(stack.info.api_url, list(folders), settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": asdict(settings),
        "cold": [asdict(r) for r in cold],
        "spread": [asdict(r) for r in spread],
        "replace_under_load": "not measured: `easel models replace` is not built yet",
    }
    out.write_text(json.dumps(report, indent=2))
    return format_rows(cold, spread) + f"\nwritten to {out}"
