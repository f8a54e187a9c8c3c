"""``easel bench vectorize``: per tier, latency (client and server side), conversions/s and CPU-seconds per request.

Server side, it also reports how often the quality check ran (``checked``) and what it cost (``check_ms`` p50 over the
checked requests: the tier's SVG rendered back and scored, and the defaults converted, rendered and scored). With
``--behind-heavy N``: a small icon's latency alone, and while N 2048x2048 noise uploads trace
(:func:`icon_behind_heavy`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from loadtests.benchmarks.loop import BenchRow, measure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VectorizeSettings:
    """What every tier runs."""

    size: int = 512
    tiers: tuple[str, ...] = ("1", "2", "3", "auto", "default")
    concurrency: tuple[int, ...] = (1,)
    requests: int = 40
    behind_heavy: int = 0  # heavy uploads in flight while a small icon is timed (0: not measured)


def load_uploads(folder: Path, size: int, limit: int = 40) -> list[bytes]:
    """PNG uploads from ``folder``, resized so the longest side is ``size`` pixels."""
    uploads = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:limit]:
        image = Image.open(path).convert("RGB")
        scale = size / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        uploads.append(buffer.getvalue())
    if not uploads:
        raise FileNotFoundError(f"no PNG/JPEG images in {folder}")
    return uploads


def bench_tiers(api_url: str, uploads: list[bytes], settings: VectorizeSettings) -> tuple[list[BenchRow], dict]:
    """Every tier at every concurrency; also the server-side total time (``timings_ms.total``) percentiles."""
    server_ms: dict[str, dict[str, float]] = {}

    async def run_all() -> list[BenchRow]:
        rows = []
        limits = httpx.Limits(max_connections=max(settings.concurrency))
        async with httpx.AsyncClient(base_url=api_url, timeout=300, limits=limits) as client:
            for tier in settings.tiers:
                for concurrency in settings.concurrency:
                    totals: list[float] = []
                    checks: list[float | None] = []

                    async def call(index: int, tier: str = tier, totals: list = totals, checks: list = checks) -> None:
                        response = await client.post(
                            "/v1/vectorize",
                            files={"file": ("icon.png", uploads[index % len(uploads)], "image/png")},
                            data={"tier": tier},
                            headers={"Accept": "application/json"},
                        )
                        response.raise_for_status()
                        body = response.json()
                        totals.append(body["timings_ms"]["total"])
                        checks.append(body["timings_ms"].get("check") if body["checked"] else None)

                    rows.append(await measure(f"tier {tier}", call, concurrency, settings.requests))
                    timed = totals[-settings.requests :]
                    checked = [c for c in checks[-settings.requests :] if c is not None]
                    server_ms[f"{tier}@{concurrency}"] = {
                        "p50": float(np.percentile(timed, 50)),
                        "p95": float(np.percentile(timed, 95)),
                        "checked": len(checked) / len(timed),
                        "check_p50": float(np.percentile(checked, 50)) if checked else 0.0,
                    }
        return rows

    return asyncio.run(run_all()), server_ms


def upload_and_hold(api_url: str, image: bytes) -> socket.socket:
    """A multipart vectorize upload sent whole on a raw socket, left open (the caller reads the answer or leaves)."""
    boundary = "easel-boundary"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'.encode()
    body += image + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /v1/vectorize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = api_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(head + body)
    return sock


def noise_png(side: int = 2048) -> bytes:
    """Random pixels as PNG: within the upload limits, and more detail than tracing can take in its deadline."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def icon_behind_heavy(api_url: str, icon: bytes, heavy: int, icons: int = 10, settle_s: float = 6.0) -> dict:
    """Seconds per request of ``icon``: alone, then while ``heavy`` noise uploads trace (their clients leave after)."""

    def timed(client: httpx.Client) -> float:
        started = time.perf_counter()
        client.post("/v1/vectorize", files={"file": ("icon.png", icon, "image/png")}).raise_for_status()
        return time.perf_counter() - started

    with httpx.Client(base_url=api_url, timeout=300) as client:
        alone = [timed(client) for _ in range(icons)]
        noise = noise_png()
        held = [upload_and_hold(api_url, noise) for _ in range(heavy)]
        try:
            time.sleep(settle_s)  # uploaded, decoded and scored: tracing
            behind = [timed(client) for _ in range(icons)]
        finally:
            for sock in held:
                sock.close()
    return {"alone_s": alone, "behind_heavy_s": behind}


def run_benchmark(images: Path, settings: VectorizeSettings, out: Path) -> str:
    """``easel bench vectorize``: every tier against a scratch stack; writes JSON to ``out``, returns the report."""
    import os

    from loadtests.benchmarks import loop
    from serve.stack import scratch_stack

    uploads = load_uploads(images, settings.size)
    icon = load_uploads(images, 64, limit=1)[0]
    behind = {}
    with scratch_stack() as stack:
        rows, server_ms = bench_tiers(stack.info.api_url, uploads, settings)
        if settings.behind_heavy:
            logger.info("timing a 64 px icon behind %d heavy uploads", settings.behind_heavy)
            behind = icon_behind_heavy(stack.info.api_url, icon, settings.behind_heavy)
    loop.write_json(
        out,
        rows,
        settings=settings.__dict__,
        server_ms=server_ms,
        icon_behind_heavy=behind,
        images=str(images),
        cpus=os.cpu_count(),
    )
    server = ", ".join(
        f"tier {key}: {v['p50']:.1f} / {v['p95']:.1f} ({v['checked']:.0%}, {v['check_p50']:.1f})"
        for key, v in server_ms.items()
    )
    table = loop.format_table(rows, "conv")
    heading = "server-side total ms (p50 / p95; share checked, check ms p50)"
    lines = [table, f"{heading}: {server}"]
    for name, seconds in behind.items():
        lines.append(f"64 px icon, {name}: p50 {np.median(seconds):.2f} s, max {max(seconds):.2f} s")
    return "\n".join([*lines, f"written to {out}"])
