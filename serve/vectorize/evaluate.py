"""The EVAL.md protocol over a folder of PNG/JPEG files, one summary row per method.

Methods: vtracer defaults, each preset, the best-preset oracle, a random-search oracle, tiers 1-3 and auto.
Both oracles pick, per image, the smallest SVG whose SSIM is at least the defaults' (the defaults are in each
pool, so they never do worse than the defaults on SSIM). ``bytes_ratio`` is the per-image ratio of SVG bytes
to the
defaults' bytes, then the median over images. ``ms`` is the per-image wall time of feature extraction,
parameter
selection and the vtracer conversion (oracles: every conversion, rendering and scoring they needed).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serve.vectorize.convert import Scored, score
from serve.vectorize.image import load_image, resize
from serve.vectorize.params import DEFAULTS, PRESETS, from_vector, sample_vectors
from serve.vectorize.runtime import TRAINED_DIR, Models
from serve.vectorize.tiers import choose

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TIER_METHODS = ("tier1", "tier2", "tier3", "auto")
METHODS = ("defaults", *PRESETS, "best_preset", "random_search", *TIER_METHODS)

_models: Models | None = None


@dataclass(frozen=True)
class Record:
    """One method on one image."""

    image: str
    method: str
    ssim: float
    n_bytes: int
    n_paths: int
    ms: float
    params: dict


def _init(models_dir: str) -> None:
    global _models
    _models = Models.load(Path(models_dir))


def _record(name: str, method: str, result: Scored, ms: float, params) -> Record:
    return Record(name, method, result.ssim, result.n_bytes, result.n_paths, ms, params.kwargs())


def _oracle(pool: list[tuple], baseline: float) -> tuple:
    ok = [p for p in pool if p[1].ssim >= baseline]
    return min(ok, key=lambda p: p[1].n_bytes) if ok else max(pool, key=lambda p: p[1].ssim)


def evaluate_image(job: tuple[str, int, int, int]) -> list[Record]:
    """All methods on one image (runs in a worker; models come from the pool initializer)."""
    path, size, random_search, seed = job
    name = Path(path).name
    pixels = resize(load_image(path), size)
    models = _models or Models()
    records, pool = [], []
    for method, params in (("defaults", DEFAULTS), *PRESETS.items()):
        result = score(pixels, params)
        pool.append((params, result))
        records.append(_record(name, method, result, result.convert_s * 1000, params))
    baseline = pool[0][1].ssim
    params, result = _oracle(pool, baseline)
    records.append(_record(name, "best_preset", result, sum(r.total_s for _, r in pool) * 1000, params))
    if random_search > 0:
        rng = np.random.default_rng([seed, *name.encode()])
        search = [pool[0]] + [(p, score(pixels, p)) for p in map(from_vector, sample_vectors(rng, random_search))]
        params, result = _oracle(search, baseline)
        records.append(_record(name, "random_search", result, sum(r.total_s for _, r in search) * 1000, params))
    for method in TIER_METHODS:
        try:
            start = time.perf_counter()
            choice = choose(pixels, method, models.mapping, models.predictor, models.policy, margin=models.margin)
            select_ms = (time.perf_counter() - start) * 1000
        except ValueError as error:
            logger.warning("%s: %s skipped (%s)", name, method, error)
            continue
        result = score(pixels, choice.params)
        records.append(_record(name, method, result, select_ms + result.convert_s * 1000, choice.params))
    return records


def summarise(records: list[Record]) -> list[dict]:
    """One row per method: mean SSIM, median bytes ratio vs defaults, median bytes/paths, p50/p95 ms."""
    default_bytes = {r.image: r.n_bytes for r in records if r.method == "defaults"}
    rows = []
    for method in METHODS:
        mine = [r for r in records if r.method == method]
        if not mine:
            continue
        ms = np.asarray([r.ms for r in mine])
        rows.append(
            {
                "method": method,
                "images": len(mine),
                "mean_ssim": float(np.mean([r.ssim for r in mine])),
                "bytes_ratio": float(np.median([r.n_bytes / default_bytes[r.image] for r in mine])),
                "median_bytes": float(np.median([r.n_bytes for r in mine])),
                "median_paths": float(np.median([r.n_paths for r in mine])),
                "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of :func:`summarise` rows."""
    lines = [
        f"{'method':<14}{'n':>4}{'mean SSIM':>11}{'bytes/def':>11}{'med bytes':>11}{'med paths':>11}"
        f"{'p50 ms':>9}{'p95 ms':>9}"
    ]
    for r in rows:
        lines.append(
            f"{r['method']:<14}{r['images']:>4}{r['mean_ssim']:>11.4f}{r['bytes_ratio']:>11.3f}"
            f"{r['median_bytes']:>11.0f}{r['median_paths']:>11.0f}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}"
        )
    return "\n".join(lines)


def evaluate_folder(
    folder: Path,
    size: int = 256,
    random_search: int = 40,
    limit: int | None = None,
    processes: int = 2,
    models_dir: Path = TRAINED_DIR,
    seed: int = 0,
) -> dict:
    """Run every method on every PNG/JPEG in ``folder``; return summary rows and per-image records.

    Args:
        folder: Images to evaluate.
        size: Images are resized so their longest side is ``size``.
        random_search: Parameter sets per image for the random-search oracle (0 disables it).
        limit: Only the first ``limit`` images (sorted by name).
        processes: Worker processes (vtracer holds the GIL, so threads would not help).
        models_dir: Trained models folder.
        seed: Seed of the random search.

    Returns:
        ``{"summary": [...], "records": [...], "settings": {...}}``.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"no PNG/JPEG images in {folder}")
    jobs = [(str(p), size, random_search, seed) for p in files]
    records: list[Record] = []
    start = time.perf_counter()
    context = multiprocessing.get_context("fork")
    with context.Pool(processes, initializer=_init, initargs=(str(models_dir),)) as pool:
        for i, image_records in enumerate(pool.imap(evaluate_image, jobs)):
            records += image_records
            if (i + 1) % max(1, len(jobs) // 10) == 0 or i + 1 == len(jobs):
                logger.info("evaluated %d/%d images (%.0f s)", i + 1, len(jobs), time.perf_counter() - start)
    settings = {
        "folder": str(folder),
        "images": len(files),
        "size": size,
        "random_search": random_search,
        "seed": seed,
        "processes": processes,
        "renderer": "cairosvg",
        "models": str(models_dir),
    }
    return {"settings": settings, "summary": summarise(records), "records": [asdict(r) for r in records]}
