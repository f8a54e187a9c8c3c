"""``easel bench text-moderator``: the text moderator's cost per prompt through Triton, as the stack serves it.

A BERT-base-shaped multi-label classifier (12 layers, hidden 768, as toxicity classifiers are; random weights:
nothing is downloaded, and the cost does not depend on them) is built and served by a scratch stack
(``--text-moderator``). Each concurrency sends one prompt a call, in a closed loop, two ways: the Gateway's own
door (:class:`serve.moderation.text_model.TextModerator`: tokenization, then Triton's ``text_moderator``), and
``POST /v1/moderations`` end to end (blocklist and classifier). Triton's counts give the rows per execution
(its dynamic batching across calls).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from loadtests.benchmarks import loop
from serve.moderation.text_model import TEXT_MODERATOR
from serve.tables import text_table

logger = logging.getLogger(__name__)

PROMPTS = (
    "a watercolor painting of a lighthouse on a cliff at dusk, soft light, gulls over the waves",
    "a red heart icon, flat vector, white background",
    "portrait of an old fisherman with a grey beard, oil on canvas, dramatic lighting",
    "a futuristic city street at night in the rain, neon signs, reflections, cinematic",
)


@dataclass(frozen=True)
class ModeratorRow:
    """One way and concurrency: milliseconds per prompt (wall / prompts), median latency, rows per execution."""

    way: str
    concurrency: int
    prompts: int
    ms_per_prompt: float
    p50_ms: float
    rows_per_execution: float


async def _measure(way: str, call, concurrency: int, prompts: int, triton_http_url: str) -> ModeratorRow:
    """``prompts`` calls of ``call`` from ``concurrency`` slots after a warm-up; Triton's rows per execution."""
    await loop.run_closed_loop(call, concurrency, concurrency)  # warm-up
    before = loop.triton_counts(triton_http_url, TEXT_MODERATOR)
    calls, wall_s = await loop.run_closed_loop(call, concurrency, prompts)
    after = loop.triton_counts(triton_http_url, TEXT_MODERATOR)
    rows = (after[0] - before[0]) / max(after[1] - before[1], 1)
    latency = statistics.median(c.latency_s for c in calls) * 1000
    row = ModeratorRow(way, concurrency, prompts, wall_s * 1000 / prompts, latency, rows)
    logger.info("%s", row)
    return row


async def _rows(stack, concurrencies: list[int], prompts: int) -> list[ModeratorRow]:
    """Each concurrency through the moderator's door, then through the API."""
    moderator = stack.service_engines.text_checker(stack.info.triton_grpc_url)
    triton = stack.info.triton_http_url
    rows = []
    async with httpx.AsyncClient(base_url=stack.info.api_url, timeout=120) as client:

        async def door(index: int) -> None:
            await moderator.check([PROMPTS[index % len(PROMPTS)]])

        async def api(index: int) -> None:
            answer = await client.post("/v1/moderations", json={"input": PROMPTS[index % len(PROMPTS)]})
            answer.raise_for_status()

        for way, call in (("TextModerator (Triton)", door), ("POST /v1/moderations", api)):
            rows += [await _measure(way, call, n, prompts, triton) for n in concurrencies]
    return rows


def run(moderator_dir: Path, concurrencies: list[int], prompts: int, out: Path) -> str:
    """Serve ``moderator_dir`` on a scratch stack, measure, write JSON to ``out``, and return the table."""
    from serve.stack import scratch_stack

    with scratch_stack(folder=out.parent / "stack-text-moderator", text_moderator=moderator_dir) as stack:
        rows = asyncio.run(_rows(stack, concurrencies, prompts))
    model = "BERT-base shape (12 layers, hidden 768, 4 labels, random weights), 128-token windows"
    loop.write_json(out, [], model=model, prompts=prompts, measured=[asdict(row) for row in rows])
    columns = [("way", "<24"), ("concurrency", ">12"), ("ms/prompt", ">10.1f"), ("p50 ms", ">8.1f")]
    columns += [("rows/exec", ">10.2f")]
    cells = [(r.way, r.concurrency, r.ms_per_prompt, r.p50_ms, r.rows_per_execution) for r in rows]
    heading = f"Text moderator through Triton: {model}, one prompt a call"
    return "\n".join([heading, text_table(columns, cells), f"written to {out}"])
