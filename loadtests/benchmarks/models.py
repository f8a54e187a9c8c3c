"""``easel bench models``: several models in one stack: cold loads, and throughput spread over 1, 2 and 3 models.

Three embedded models (the default SD, a second SD made from it, the tiny SDXL) in scratch stacks:

- **cold loads**: a stack whose room for weights holds one model (``--model-weights``), so each request for another
  model unloads the loaded one and loads its own; per model, the load (``Easel-Model-Load-Seconds``) and the time to
  its first image, over ``cold_rounds`` rounds;
- **spread**: a stack with every model loaded; the same total load (``requests`` at ``concurrency``) sent to one
  model alone, then spread evenly over two and three: images per second, p50 and p95 latency, failures;
- **replace under load**: on that stack, ``concurrency`` threads send mixed requests (synchronous generations and
  background jobs) over the three models while one model is replaced (``PUT /v1/models/{id}``, what ``easel models
  replace`` calls) with another engine folder: the replace's seconds, requests sent and failed (must be 0), jobs
  submitted and lost (must be 0), p95 latency meanwhile, and whether the first request after it got the new version.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from loadtests.chaos import Clients
from serve.tables import text_table

logger = logging.getLogger(__name__)

GENERATE = "/v1/images/generations"
LOAD_SECONDS = "Easel-Model-Load-Seconds"
REQUEST_TIMEOUT_S = 600.0
"""A load's client waits this long for an answer (a request queued behind a cold load or a replace)."""


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


@dataclass(frozen=True)
class ReplaceRow:
    """A model replaced while mixed requests run over every model."""

    replace_s: float  # the admin call, sent to its answer (the new version installed and loaded)
    requests: int
    failed: int
    jobs: int
    jobs_lost: int  # submitted, and not succeeded
    p95_s: float
    new_version_served: bool  # the first request for the model after the call got the new version


@dataclass
class LoadTally:
    """What a :class:`MixedLoad` sent and got back."""

    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # the first few failures' messages

    @property
    def failed(self) -> int:
        """Answers that were not what was asked (200 for a generation, 202 for a job), connection errors included."""
        return sum(status not in (200, 202) for status in self.statuses)


class MixedLoad(Clients):
    """``threads`` threads sending requests over ``models`` until the block ends: every ``job_every``-th a job.

    The rest are synchronous generations; each thread goes round the models. The first thread's first request is a
    job (the others' jobs come in turn after it), so even a short block sends one. :meth:`settle` waits for the jobs.
    """

    def __init__(self, api_url: str, models: list[str], body: dict, threads: int = 4, job_every: int = 3) -> None:
        super().__init__(threads, hang_s=REQUEST_TIMEOUT_S)
        self.api_url, self.models, self.body, self.job_every = api_url, models, body, job_every
        self.tally = LoadTally()

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.api_url, timeout=REQUEST_TIMEOUT_S) as api:
            for count in itertools.count():
                if self._stop.is_set():
                    return
                model = self.models[(index + count) % len(self.models)]
                background = (index + count) % self.job_every == 0
                body = self.body | {"model": model, "seed": 1000 * index + count, "background": background}
                started = time.perf_counter()
                try:
                    response = api.post(GENERATE, json=body)
                    status, said = response.status_code, response.text[:300]
                except httpx.HTTPError as error:
                    status, said = 0, repr(error)
                with self._lock:
                    self.tally.statuses.append(status)
                    if status == 202:
                        self.tally.jobs.append(response.json()["id"])
                    elif status == 200:
                        self.tally.latencies.append(time.perf_counter() - started)
                    elif len(self.tally.refusals) < 5:
                        self.tally.refusals.append(f"{model}: {status} {said}")

    def settle(self, timeout_s: float = 600) -> dict[str, int]:
        """Wait for every job to end; how many ended in each state (one still unfinished at the deadline: ``lost``)."""
        states: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.api_url, timeout=60) as api:
            for job_id in self.tally.jobs:
                while (status := api.get(f"/v1/jobs/{job_id}").json()["status"]) in ("queued", "running"):
                    if time.monotonic() > deadline:
                        status = "lost"
                        break
                    time.sleep(0.2)
                states[status] = states.get(status, 0) + 1
        return states


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


def bench_replace(api_url: str, names: list[str], model: str, engine_dir: Path, settings: ModelsSettings) -> ReplaceRow:
    """``model`` replaced by ``engine_dir`` while ``settings.concurrency`` threads send mixed requests to ``names``."""
    body = _body(settings, model, 0)  # the load sets each request's model and seed
    with MixedLoad(api_url, names, body, threads=settings.concurrency) as load, httpx.Client(base_url=api_url) as api:
        time.sleep(3)  # under way before the replace
        started = time.perf_counter()
        replaced = api.put(f"/v1/models/{model}", json={"engine_dir": str(engine_dir)}, timeout=600)
        replace_s = time.perf_counter() - started
        replaced.raise_for_status()
        logger.info("replaced %s in %.2f s under load: %s", model, replace_s, replaced.json())
        after = api.post(GENERATE, json=body | {"model": model, "seed": 0}, timeout=600)
        new_version = after.headers.get("Easel-Model-Version") == str(replaced.json()["version"])
        time.sleep(3)  # the old version's requests finish, the new one's run
    states = load.settle()
    tally = load.tally
    if tally.refusals:
        logger.warning("failures under the replace: %s", tally.refusals)
    return ReplaceRow(
        round(replace_s, 3),
        len(tally.statuses),
        tally.failed,
        len(tally.jobs),
        len(tally.jobs) - states.get("succeeded", 0),
        round(float(np.percentile(tally.latencies, 95)), 3) if tally.latencies else float("nan"),
        new_version,
    )


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


def format_rows(cold: list[ColdRow], spread: list[SpreadRow], replaced: ReplaceRow) -> str:
    """The tables the command prints."""
    cold_columns = [("model", "<16"), ("family", "<8"), ("weights MiB", ">12.1f"), ("load s", ">9.3f")]
    cold_columns.append(("first image s", ">15.3f"))
    spread_columns = [("models", ">7"), ("images/s", ">10.3f"), ("p50 s", ">9.3f"), ("p95 s", ">9.3f")]
    spread_columns.append(("failed", ">8"))
    return "\n\n".join(
        [
            text_table(cold_columns, [(r.model, r.family, r.weights_mib, r.load_s, r.first_image_s) for r in cold]),
            text_table(spread_columns, [(r.models, r.images_per_s, r.p50_s, r.p95_s, r.failed) for r in spread]),
            text_table(
                [
                    ("replace s", ">10.3f"),
                    ("requests", ">9"),
                    ("failed", ">7"),
                    ("jobs", ">5"),
                    ("jobs lost", ">10"),
                    ("p95 s", ">8.3f"),
                    ("new version served", ">19"),
                ],
                [tuple(asdict(replaced).values())],
            ),  # fmt: skip
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
    built = {name: build(folder, scratch) for name, folder in folders.items()}  # built once, here
    weights = {name: engines.weights_bytes for name, engines in built.items()}
    one_room = max(weights.values())
    with scratch_stack(models=folders, model_weights_bytes=one_room) as stack:
        listed = {m["id"]: m for m in httpx.get(f"{stack.info.api_url}/v1/models", timeout=30).json()["data"]}
        cold = bench_cold(stack.info.api_url, {n: listed[n] | {"weights_bytes": weights[n]} for n in folders}, settings)
    with scratch_stack(models=folders) as stack:
        spread = bench_spread(stack.info.api_url, list(folders), settings)
        replaced = bench_replace(stack.info.api_url, list(folders), "sd-second", built[DEFAULT_MODEL].path, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": asdict(settings),
        "cold": [asdict(r) for r in cold],
        "spread": [asdict(r) for r in spread],
        "replace_under_load": asdict(replaced),
    }
    out.write_text(json.dumps(report, indent=2))
    return format_rows(cold, spread, replaced) + f"\nwritten to {out}"
