"""The EVAL.md protocol over a folder of PNG/JPEG files, one summary row per method.

Methods: vtracer defaults, each preset, the best-preset oracle, a random-search oracle (optional), tiers 1-3 and auto
as the server answers them (quality first: checked against the defaults when :func:`serve.vectorize.tiers.needs_check`
says so), and the same tiers size first (``tier1_size``...: the tier's own pick, unchecked). Where an icon's source
SVG lies beside its PNG (``name.svg``), ``original`` is that file: its bytes and shape count are the ground truth.

Both oracles pick, per image, the smallest SVG whose SSIM is at least the defaults'. ``bytes_ratio`` is the median over
images of the per-image ratio of SVG bytes to the defaults'. ``worse_002`` is the share of images whose SSIM is more
than 0.02 below the defaults'. ``ms`` is the per-image time of selection, conversion and the check (oracles: every
conversion, rendering and scoring they needed).
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from build_engines.vectorize.runtime import TRAINED_DIR, Models
from serve.images.raster import load_image, resize
from serve.vectorize.convert import Scored, render, score, ssim
from serve.vectorize.params import DEFAULTS, PRESETS, from_vector, sample_vectors
from serve.vectorize.schema import Preference, Tier
from serve.vectorize.tiers import answer, choose, needs_check, score_svg

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TIERS = (Tier.TIER1, Tier.TIER2, Tier.TIER3, Tier.AUTO)
TIER_METHODS = tuple(f"tier{t}" if t is not Tier.AUTO else "auto" for t in TIERS)
METHODS = (
    "original",
    "defaults",
    *PRESETS,
    "best_preset",
    "random_search",
    *TIER_METHODS,
    *(f"{m}_size" for m in TIER_METHODS),
)
ACCEPT_SSIM_DROP = 0.002  # issue 20: mean SSIM >= the defaults' - 0.002
ACCEPT_WORSE_SHARE = 0.05  # at most 5 % of images more than 0.02 worse
ACCEPT_BYTES_RATIO = 0.5  # median bytes <= 0.5 x the defaults'

_SHAPES = re.compile(rb"<(path|rect|circle|ellipse|polygon|polyline|line)\b")
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
    checked: bool = False
    replaced: bool = False


def _init(models_dir: str) -> None:
    global _models
    _models = Models.load(Path(models_dir))


def _record(name: str, method: str, result: Scored, ms: float, params) -> Record:
    return Record(name, method, result.ssim, result.n_bytes, result.n_paths, ms, params.kwargs())


def _oracle(pool: list[tuple], baseline: float) -> tuple:
    ok = [p for p in pool if p[1].ssim >= baseline]
    return min(ok, key=lambda p: p[1].n_bytes) if ok else max(pool, key=lambda p: p[1].ssim)


def _original(name: str, path: Path, pixels: np.ndarray) -> Record | None:
    """The icon's source SVG, when it lies beside the PNG: its bytes and shape elements, rendered back."""
    source = path.with_suffix(".svg")
    if not source.exists():
        return None
    data = source.read_bytes()
    rendered = render(data.decode().replace("currentColor", "#000000"), pixels.shape[1], pixels.shape[0])
    return Record(name, "original", ssim(pixels, rendered), len(data), len(_SHAPES.findall(data)), 0.0, {})


def _tier_records(name: str, pixels: np.ndarray, models: Models) -> list[Record]:
    """Each tier as served (quality first) and size first (its own pick, unchecked), from one conversion each."""
    records = []
    for tier, method in zip(TIERS, TIER_METHODS, strict=True):
        start = time.perf_counter()
        scores = models.scores(pixels)
        choice = choose(tier, scores, max(pixels.shape[:2]))
        result = answer(pixels, choice, needs_check(choice, scores, Preference.QUALITY, None))
        ms = (time.perf_counter() - start) * 1000
        served = result.ssim if result.ssim is not None else score_svg(pixels, result.conversion.svg)
        replaced = result.unchecked is not None
        conversion, params = result.conversion, result.choice.params.kwargs()
        records.append(
            Record(name, method, served, conversion.n_bytes, conversion.n_paths, ms, params, result.checked, replaced)
        )
        own, own_ssim = (result.unchecked, result.unchecked_ssim) if replaced else (conversion, served)
        own_ms = ms - result.timings_ms.get("check", 0.0)
        records.append(
            Record(name, f"{method}_size", own_ssim, own.n_bytes, own.n_paths, own_ms, choice.params.kwargs())
        )
    return records


def evaluate_image(job: tuple[str, int, int, int]) -> list[Record]:
    """All methods on one image (runs in a worker; models come from the pool initializer)."""
    path, size, random_search, seed = job
    name = Path(path).name
    pixels = resize(load_image(path), size)
    records, pool = [], []
    original = _original(name, Path(path), pixels)
    if original is not None:
        records.append(original)
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
    if _models is not None:
        records += _tier_records(name, pixels, _models)
    return records


def summarise(records: list[Record]) -> list[dict]:
    """One row per method: SSIM against the defaults, size against the defaults, checks, time, acceptance."""
    default = {r.image: r for r in records if r.method == "defaults"}
    rows = []
    for method in METHODS:
        mine = [r for r in records if r.method == method]
        if not mine:
            continue
        ms = np.asarray([r.ms for r in mine])
        drop = np.asarray([default[r.image].ssim - r.ssim for r in mine])
        row = {
            "method": method,
            "images": len(mine),
            "mean_ssim": float(np.mean([r.ssim for r in mine])),
            "defaults_ssim": float(np.mean([default[r.image].ssim for r in mine])),
            "worse_002": float(np.mean(drop > 0.02)),
            "worst_drop": float(drop.max()),
            "bytes_ratio": float(np.median([r.n_bytes / default[r.image].n_bytes for r in mine])),
            "median_bytes": float(np.median([r.n_bytes for r in mine])),
            "median_paths": float(np.median([r.n_paths for r in mine])),
            "checked": float(np.mean([r.checked for r in mine])),
            "replaced": float(np.mean([r.replaced for r in mine])),
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)),
        }
        row["accepted"] = bool(
            row["mean_ssim"] >= row["defaults_ssim"] - ACCEPT_SSIM_DROP
            and row["worse_002"] <= ACCEPT_WORSE_SHARE
            and row["bytes_ratio"] <= ACCEPT_BYTES_RATIO
        )
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of :func:`summarise` rows (``ok``: the issue-20 acceptance, for tiers)."""
    lines = [
        f"{'method':<14}{'n':>4}{'mean SSIM':>10}{'vs def':>8}{'>0.02 worse':>12}{'bytes/def':>10}{'med bytes':>10}"
        f"{'med paths':>10}{'checked':>8}{'replaced':>9}{'p50 ms':>8}{'p95 ms':>8}  ok"
    ]
    for r in rows:
        ok = ("yes" if r["accepted"] else "NO") if r["method"] in TIER_METHODS else ""
        lines.append(
            f"{r['method']:<14}{r['images']:>4}{r['mean_ssim']:>10.4f}{r['mean_ssim'] - r['defaults_ssim']:>+8.4f}"
            f"{r['worse_002']:>12.1%}{r['bytes_ratio']:>10.3f}{r['median_bytes']:>10.0f}{r['median_paths']:>10.0f}"
            f"{r['checked']:>8.0%}{r['replaced']:>9.0%}{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}  {ok}"
        )
    return "\n".join(lines)


def evaluate_folder(
    folder: Path,
    size: int = 256,
    random_search: int = 0,
    limit: int | None = None,
    processes: int = 2,
    models_dir: Path | None = TRAINED_DIR,
    seed: int = 0,
) -> dict:
    """Run every method on every PNG/JPEG in ``folder``; return summary rows and per-image records.

    Args:
        folder: Images to evaluate (a ``name.svg`` beside ``name.png`` is its ground truth).
        size: Images are resized so their longest side is ``size``.
        random_search: Parameter sets per image for the random-search oracle (0 leaves it out).
        limit: Only the first ``limit`` images (sorted by name).
        processes: Worker processes (vtracer holds the GIL, so threads would not help).
        models_dir: Trained models folder (None: baselines only).
        seed: Seed of the random search.

    Returns:
        ``{"summary": [...], "records": [...], "settings": {...}}``.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"no PNG/JPEG images in {folder}")
    if models_dir is not None:
        Models.load(models_dir)  # fail here, not in every worker, when a model is missing
    jobs = [(str(p), size, random_search, seed) for p in files]
    records: list[Record] = []
    start = time.perf_counter()
    context = multiprocessing.get_context("fork")
    initargs = (str(models_dir),) if models_dir is not None else None
    with context.Pool(processes, initializer=_init if initargs else None, initargs=initargs or ()) as pool:
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
