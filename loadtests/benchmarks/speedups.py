"""``easel bench speedups``: fewer UNet rows per image, each technique alone and combined, side by side in one run.

One stack (the embedded default with its LCM student, step caching's engines, the approximate cache on) answers one
fixed stream of prompts once per technique: the baseline (20-step DDIM, guidance on every step), the few-step LCM
student, adaptive guidance (``guidance_cutoff``), step caching (``cache_interval``), approximate caching across
requests (``approximate_cache``), and their combinations. The stream is `easel eval generate`'s held-out prompts
(each held-out colour x icon pairing in its first caption, seeds 0-3: repeats of one prompt) plus near repeats (the
same pairing in another caption, another seed), in a fixed shuffled order, one request at a time.

Per technique: **UNet rows per image** from Triton's statistics (``inference_count`` of every UNet-like engine:
``unet``, ``unet_lcm``, ``unet_deep``, ``unet_shallow``; canaries are off for the run), **CPU-seconds per image** (every
process of the stack, user + system), **p50 latency**, the steps the approximate cache skipped
(``Easel-Steps-Skipped``), and quality: `easel eval generate`'s colour accuracy and recognisability on its held-out
prompts, and PSNR / SSIM to the baseline's image of the same prompt and seed (every request of the stream).
Techniques run one after another; what the stack keeps (the approximate cache) is keyed by each technique's own
settings, so none sees another's latents.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from build_engines.text_to_image.evaluate import classify, dominant_colour, train_classifier
from build_engines.text_to_image.icons import ICONS, TEMPLATES, Pairing, held_out
from loadtests.benchmarks.loop import cpu_by_process, triton_counts
from serve import tables
from serve.stack import scratch_stack
from serve.text_to_image.spec import DISTILLED_UNET, UNET, UNET_DEEP, UNET_SHALLOW

logger = logging.getLogger(__name__)

UNET_ENGINES = (UNET, DISTILLED_UNET, UNET_DEEP, UNET_SHALLOW)
"""Every engine that runs a UNet step: the rows counted."""
BASELINE = "baseline"
ACCEPTANCE_POINTS = 2.0
"""How far (percentage points) the colour and recognisability scores may fall below the baseline's."""
ACCEPTANCE_ROWS = 0.5
"""The UNet rows per image the best combination may use, as a share of the baseline's."""


@dataclass(frozen=True)
class SpeedupSettings:
    """The stream and each technique's setting."""

    pairings: int = len(ICONS)  # held-out pairings in the stream (all of easel eval generate's)
    seeds: int = 4  # easel eval generate's seeds per pairing (its prompt repeated)
    near_repeats: int = 1  # per pairing: the same pairing in another caption, another seed
    steps: int = 20
    guidance_scale: float = 7.5
    lcm_steps: int = 4
    guidance_cutoff: float = 0.5
    cache_interval: int = 3
    skip_share: float = 0.25  # the stack's --approximate-cache
    concurrency: int = 1

    def techniques(self) -> dict[str, dict]:
        """Each technique's request fields, the baseline first."""
        base = {"num_inference_steps": self.steps, "scheduler": "ddim", "approximate_cache": False}
        lcm = {"num_inference_steps": self.lcm_steps, "scheduler": "lcm"}
        cutoff, cached = {"guidance_cutoff": self.guidance_cutoff}, {"cache_interval": self.cache_interval}
        approximate = {"approximate_cache": True}
        return {
            BASELINE: base,
            f"LCM student ({self.lcm_steps} steps)": base | lcm,
            f"guidance cutoff {self.guidance_cutoff:g}": base | cutoff,
            f"step cache (interval {self.cache_interval})": base | cached,
            f"approximate cache (skip {self.skip_share:g})": base | approximate,
            "cutoff + step cache": base | cutoff | cached,
            "cutoff + step cache + approximate": base | cutoff | cached | approximate,
            "LCM student + approximate": base | lcm | approximate,
        }


@dataclass(frozen=True)
class Prompt:
    """One request of the stream: a pairing in one of the captions, with a seed."""

    pairing: Pairing
    template: int
    seed: int

    @property
    def text(self) -> str:
        """The prompt."""
        return self.pairing.caption(TEMPLATES[self.template])

    @property
    def evaluated(self) -> bool:
        """Whether it is one of `easel eval generate`'s held-out prompts (the first caption, its seeds)."""
        return self.template == 0


def stream(settings: SpeedupSettings) -> list[Prompt]:
    """The fixed stream: each pairing's eval prompt with every seed, its near repeats, shuffled (seed 0)."""
    prompts = []
    for index, pairing in enumerate(held_out()[: settings.pairings]):
        prompts += [Prompt(pairing, 0, seed) for seed in range(settings.seeds)]
        for repeat in range(settings.near_repeats):
            template = 1 + (index + repeat) % (len(TEMPLATES) - 1)
            prompts.append(Prompt(pairing, template, settings.seeds + repeat))
    random.Random(0).shuffle(prompts)
    return prompts


@dataclass
class TechniqueRun:
    """What one technique cost over the stream, and what it drew."""

    name: str
    fields: dict
    images: int = 0
    unet_rows: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    steps_skipped: list[int] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_image(self) -> float:
        """UNet rows per image, every UNet-like engine."""
        return sum(self.unet_rows.values()) / self.images

    @property
    def cpu_s_per_image(self) -> float:
        """CPU-seconds of the stack per image."""
        return self.cpu_s / self.images

    @property
    def p50_s(self) -> float:
        """Median latency."""
        return statistics.median(self.latencies_s)

    def summary(self) -> dict:
        """The JSON row."""
        return {
            "technique": self.name,
            "fields": self.fields,
            "images": self.images,
            "unet_rows": self.unet_rows,
            "unet_rows_per_image": self.rows_per_image,
            "cpu_s_per_image": self.cpu_s_per_image,
            "p50_s": self.p50_s,
            "wall_s": self.wall_s,
            "hits": sum(1 for s in self.steps_skipped if s > 0),
            "steps_skipped_per_image": float(np.mean(self.steps_skipped)) if self.steps_skipped else 0.0,
            **self.quality,
        }


def _stack_cpu_s() -> float:
    """CPU-seconds every process of the stack (this process's children) has used so far."""
    return sum(seconds for label, seconds in cpu_by_process().items() if label != "benchmark")


def _decode(response: httpx.Response) -> np.ndarray:
    data = response.json()["data"][0]["b64_json"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


async def _run_technique(
    client: httpx.AsyncClient, triton_http_url: str, engines: tuple[str, ...], run: TechniqueRun, prompts, settings
) -> dict[Prompt, np.ndarray]:
    """The stream through the stack with ``run``'s fields; fills ``run``'s costs and returns the images."""
    body = {"size": "64x64", "guidance_scale": settings.guidance_scale} | run.fields
    warm = await client.post("/v1/images/generations", json=body | {"prompt": "warm up", "approximate_cache": False})
    warm.raise_for_status()
    images: dict[Prompt, np.ndarray] = {}
    queue = iter(prompts)

    async def slot() -> None:
        for prompt in queue:
            started = time.perf_counter()
            asked = body | {"prompt": prompt.text, "seed": prompt.seed}
            response = await client.post("/v1/images/generations", json=asked)
            response.raise_for_status()
            run.latencies_s.append(time.perf_counter() - started)
            run.steps_skipped.append(int(response.headers.get("Easel-Steps-Skipped", 0)))
            images[prompt] = _decode(response)
            if len(images) % 25 == 0:
                logger.info("%s: %d/%d images", run.name, len(images), len(prompts))

    before_rows = {engine: triton_counts(triton_http_url, engine)[0] for engine in engines}
    before_cpu, started = _stack_cpu_s(), time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(settings.concurrency)))
    run.wall_s, run.cpu_s = time.perf_counter() - started, _stack_cpu_s() - before_cpu
    after_rows = {engine: triton_counts(triton_http_url, engine)[0] for engine in engines}
    run.unet_rows = {e: after_rows[e] - before_rows[e] for e in engines if after_rows[e] > before_rows[e]}
    run.images = len(images)
    logger.info(
        "%s: %.1f UNet rows/image, %.3f CPU-s/image, p50 %.3f s",
        run.name,
        run.rows_per_image,
        run.cpu_s_per_image,
        run.p50_s,
    )
    return images


def _score(runs: list[TechniqueRun], images: dict[str, dict[Prompt, np.ndarray]]) -> None:
    """Each run's quality: colour and recognisability on the eval's prompts; PSNR and SSIM to the baseline."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    classifier, _ = train_classifier()
    baseline = images[BASELINE]
    for run in runs:
        drawn = images[run.name]
        evaluated = [p for p in drawn if p.evaluated]
        icons = classify(classifier, np.stack([drawn[p] for p in evaluated]))
        colour_ok = [dominant_colour(drawn[p]) == p.pairing.colour for p in evaluated]
        icon_ok = [ICONS[i] == p.pairing.icon for i, p in zip(icons, evaluated, strict=True)]
        psnr = [peak_signal_noise_ratio(baseline[p], drawn[p], data_range=255) for p in drawn]
        ssim = [structural_similarity(baseline[p], drawn[p], channel_axis=2, data_range=255) for p in drawn]
        finite = [value for value in psnr if np.isfinite(value)]
        run.quality = {
            "colour_pct": 100 * float(np.mean(colour_ok)),
            "icon_pct": 100 * float(np.mean(icon_ok)),
            "psnr_db": float(np.mean(finite)) if finite else float("inf"),
            "ssim": float(np.mean(ssim)),
        }


def acceptance(rows: list[dict]) -> dict:
    """The issue's acceptance: the combination of fewest UNet rows whose scores stay within 2 points of the baseline."""
    baseline = rows[0]
    keeping = [
        r
        for r in rows[1:]
        if r["colour_pct"] >= baseline["colour_pct"] - ACCEPTANCE_POINTS
        and r["icon_pct"] >= baseline["icon_pct"] - ACCEPTANCE_POINTS
    ]
    if not keeping:
        return {"met": False, "best": None}
    best = min(keeping, key=lambda r: (r["unet_rows_per_image"], r["cpu_s_per_image"]))
    rows_share = best["unet_rows_per_image"] / baseline["unet_rows_per_image"]
    cpu_share = best["cpu_s_per_image"] / baseline["cpu_s_per_image"]
    return {
        "met": rows_share <= ACCEPTANCE_ROWS and cpu_share <= ACCEPTANCE_ROWS,
        "best": best["technique"],
        "rows_share": rows_share,
        "cpu_share": cpu_share,
    }


def format_table(rows: list[dict]) -> str:
    """The side-by-side table."""
    width = max(len(r["technique"]) for r in rows) + 2
    columns = [
        ("technique", f"<{width}"),
        ("UNet rows/img", ">14.1f"),
        ("x base", ">8.2f"),
        ("CPU-s/img", ">10.3f"),
        ("x base", ">8.2f"),
        ("p50 s", ">8.3f"),
        ("skipped/img", ">12.2f"),
        ("colour %", ">9.1f"),
        ("icon %", ">8.1f"),
        ("PSNR dB", ">9.1f"),
        ("SSIM", ">7.3f"),
    ]
    base = rows[0]
    cells = [
        (
            r["technique"],
            r["unet_rows_per_image"],
            r["unet_rows_per_image"] / base["unet_rows_per_image"],
            r["cpu_s_per_image"],
            r["cpu_s_per_image"] / base["cpu_s_per_image"],
            r["p50_s"],
            r["steps_skipped_per_image"],
            r["colour_pct"],
            r["icon_pct"],
            r["psnr_db"],
            r["ssim"],
        )
        for r in rows
    ]
    return tables.text_table(columns, cells)


def plot(rows: list[dict], path: Path) -> Path:
    """Bars per technique: UNet rows and CPU-seconds per image (x baseline), p50 latency, and the quality scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["technique"] for r in rows]
    base = rows[0]
    figure, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(rows) + 2), sharey=True)
    y = np.arange(len(rows))
    rows_share = [r["unet_rows_per_image"] / base["unet_rows_per_image"] for r in rows]
    axes[0].barh(y - 0.2, rows_share, 0.4, label="UNet rows")
    axes[0].barh(y + 0.2, [r["cpu_s_per_image"] / base["cpu_s_per_image"] for r in rows], 0.4, label="CPU-seconds")
    axes[0].axvline(ACCEPTANCE_ROWS, color="grey", linestyle="--", linewidth=1)
    axes[0].set_xlabel("per image, x the baseline")
    axes[0].legend(loc="lower right")
    axes[1].barh(y, [r["p50_s"] for r in rows], 0.6)
    axes[1].set_xlabel("p50 latency, s")
    for offset, key, label in [(-0.27, "colour_pct", "colour %"), (0, "icon_pct", "recognisability %")]:
        axes[2].barh(y + offset, [r[key] for r in rows], 0.27, label=label)
    axes[2].barh(y + 0.27, [100 * r["ssim"] for r in rows], 0.27, label="SSIM to baseline x 100")
    axes[2].set_xlabel("quality")
    axes[2].legend(loc="lower left", fontsize="small")
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def run_speedups_benchmark(settings: SpeedupSettings, out: Path, plot_path: Path) -> str:
    """Every technique over the stream on one stack; writes JSON, the images and the plot, returns the report.

    The images go beside the JSON (``.npz``, each under ``technique index|prompt|seed``).
    """
    prompts = stream(settings)
    logger.info("stream: %d prompts (%d of easel eval generate's)", len(prompts), sum(p.evaluated for p in prompts))
    options = {"step_cache": True, "approximate_cache": settings.skip_share, "canary_interval_s": 86_400.0}
    runs = [TechniqueRun(name, fields) for name, fields in settings.techniques().items()]
    images: dict[str, dict[Prompt, np.ndarray]] = {}
    with scratch_stack(**options) as stack:
        engines = tuple(e for e in UNET_ENGINES if e in stack.engines.specs)

        async def all_runs() -> None:
            async with httpx.AsyncClient(base_url=stack.info.api_url, timeout=600) as client:
                for run in runs:
                    images[run.name] = await _run_technique(
                        client, stack.info.triton_http_url, engines, run, prompts, settings
                    )

        asyncio.run(all_runs())
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out.with_suffix(".npz"),
        **{f"{i}|{p.text}|{p.seed}": images[run.name][p] for i, run in enumerate(runs) for p in prompts},
    )
    _score(runs, images)
    rows = [run.summary() for run in runs]
    verdict = acceptance(rows)
    report = {"settings": asdict(settings), "prompts": len(prompts), "rows": rows, "acceptance": verdict}
    out.write_text(json.dumps(report, indent=2))
    plot(rows, plot_path)
    said = (
        f"acceptance {'met' if verdict['met'] else 'NOT met'}: best within {ACCEPTANCE_POINTS:g} points of the "
        f"baseline's scores: {verdict['best']}"
    )
    if verdict["best"]:
        said += f", {verdict['rows_share']:.2f}x its UNet rows and {verdict['cpu_share']:.2f}x its CPU-seconds"
    return "\n".join([format_table(rows), said, f"written: {out}, {plot_path}"])
