"""``train_all``: conversions -> predictor -> tier 1 -> PPO with real-conversion refinement -> tier 2 -> ONNX.

Writes into ``output_dir``: ``vectorize_quality.onnx``, ``vectorize_policy.onnx``, ``tier1.json`` (the mapping,
tier 2's candidate bank and calibrated margin) and ``training_report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from build_engines.vectorize.dataset import (
    Table,
    build_table,
    cache_dir,
    extend_table,
    list_images,
    merge_tables,
)
from build_engines.vectorize.export import export_onnx
from build_engines.vectorize.ppo import train_policy
from build_engines.vectorize.predictor import as_numpy_predictor, split_images, train_predictor
from build_engines.vectorize.tier1_fit import best_found, fit_tier1
from serve.vectorize.convert import score
from serve.vectorize.image import load_image, resize
from serve.vectorize.runtime import TIER1_FILE
from serve.vectorize.spec import POLICY, QUALITY
from serve.vectorize.tiers import Predictor, Tier1Map, tier2

logger = logging.getLogger(__name__)

MARGINS = (0.0, 0.002, 0.005, 0.01, 0.02)


def calibrate_margin(
    table: Table,
    heldout: np.ndarray,
    predictor: Predictor,
    mapping: Tier1Map,
    paths: list[Path],
    size: int,
    limit: int = 30,
) -> tuple[float, list[dict]]:
    """Smallest tier 2 margin whose real mean SSIM on held-out training images is >= the defaults' + 0.002.

    If none is, the margin with the best real mean SSIM.
    """
    images = np.flatnonzero(heldout)[:limit]
    if images.size == 0:
        return MARGINS[1], []
    pixels = [resize(load_image(paths[i]), size) for i in images]
    default_ssim = float(np.mean([table.ssim[np.flatnonzero(table.image == i)[0]] for i in images]))
    default_bytes = np.asarray([table.n_bytes[np.flatnonzero(table.image == i)[0]] for i in images])
    trials = []
    for margin in MARGINS:
        scores = [
            score(p, tier2(table.features[i], predictor, mapping, margin).params)
            for p, i in zip(pixels, images, strict=True)
        ]
        trial = {
            "margin": margin,
            "ssim": float(np.mean([s.ssim for s in scores])),
            "defaults_ssim": default_ssim,
            "bytes_ratio": float(np.median(np.asarray([s.n_bytes for s in scores]) / default_bytes)),
        }
        logger.info(
            "tier2 margin %.3f on %d held-out images: ssim %.4f (defaults %.4f), median bytes ratio %.3f",
            margin,
            images.size,
            trial["ssim"],
            default_ssim,
            trial["bytes_ratio"],
        )
        trials.append(trial)
    ok = [t["margin"] for t in trials if t["ssim"] >= default_ssim + 0.002]
    return (ok[0] if ok else max(trials, key=lambda t: t["ssim"])["margin"]), trials


def train_all(
    data_dir: Path | list[Path],
    output_dir: Path,
    samples_per_image: int = 48,
    seed: int = 0,
    ppo_steps: int = 100_000,
    limit: int | None = None,
    processes: int = 2,
    clusters: int = 8,
    epochs: int = 100,
    size: int = 256,
    use_cache: bool = True,
    verify_images: int = 16,
    refine_rounds: int = 2,
) -> dict:
    """Train every vectorize model from the images in ``data_dir`` and write them to ``output_dir``.

    Args:
        data_dir: Training PNG/JPEG folder, or several (each folder's conversions are cached separately).
        output_dir: Where the ONNX files, ``tier1.json`` and the report go.
        samples_per_image: Random parameter sets converted per image (besides defaults and presets).
        seed: Seed for sampling, splits, torch and PPO.
        ppo_steps: PPO environment steps.
        limit: Use only the first ``limit`` images.
        processes: Conversion worker processes.
        clusters: Tier 1 clusters.
        epochs: Predictor epochs.
        size: Training image size (longest side).
        use_cache: Reuse/write the conversions table under the cache dir.
        verify_images: Real conversions per tier 1 cluster when choosing its parameters (0: predictor only).
        refine_rounds: Rounds of real conversions at the policy's choices, predictor refit and PPO retraining.

    Returns:
        The training report (also written as ``training_report.json``).
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, processes))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    folders = [Path(d) for d in (data_dir if isinstance(data_dir, list | tuple) else [data_dir])]
    per_folder = [list_images(folder, limit) for folder in folders]
    paths = [p for folder_paths in per_folder for p in folder_paths]
    if not paths:
        raise ValueError(f"no PNG/JPEG images in {', '.join(map(str, folders))}")
    logger.info("training on %d images from %s, %d samples each", len(paths), folders, samples_per_image)
    cache = cache_dir() if use_cache else None
    table = merge_tables([build_table(p, samples_per_image, seed, size, processes, cache) for p in per_folder if p])
    timings = {"table_s": time.perf_counter() - start}

    heldout = split_images(len(paths), 0.1 if len(paths) >= 10 else 0.0, seed)
    model, predictor_metrics = train_predictor(table, heldout, seed, epochs)
    predictor = as_numpy_predictor(model)
    timings["predictor_s"] = time.perf_counter() - start - timings["table_s"]

    mapping = fit_tier1(table, predictor, paths, clusters, seed, verify_images=verify_images, size=size)
    mapping = dataclasses.replace(mapping, bank=best_found(table, np.flatnonzero(~heldout)))
    logger.info("tier2 bank: %d best-found parameter sets", len(mapping.bank))
    timings["tier1_tier2_s"] = time.perf_counter() - start - sum(timings.values())

    actor, ppo_metrics = train_policy(table.features, predictor, mapping, ppo_steps, seed)
    train_images = np.flatnonzero(~heldout)
    rng = np.random.default_rng([seed, 7])
    for round_ in range(refine_rounds):
        # Real conversions where the policy goes, so the predictor learns the regions the policy exploits.
        with torch.no_grad():
            chosen = actor(torch.as_tensor(table.features[train_images])).numpy()
        vectors = np.clip(chosen[:, None] + rng.normal(0, 0.05, (len(chosen), 3, chosen.shape[1])), 0, 1)
        vectors[:, 0] = chosen
        table = extend_table(table, paths, train_images, vectors.astype(np.float32), size, processes)
        model, predictor_metrics = train_predictor(table, heldout, seed, epochs)
        predictor = as_numpy_predictor(model)
        logger.info("refinement round %d/%d: %d rows", round_ + 1, refine_rounds, len(table.ssim))
        actor, ppo_metrics = train_policy(table.features, predictor, mapping, ppo_steps, seed)
    margin, margin_trials = calibrate_margin(table, heldout, predictor, mapping, paths, size)
    logger.info("tier2 margin: %.3f", margin)
    timings["ppo_refine_s"] = time.perf_counter() - start - sum(timings.values())

    errors = {
        QUALITY.name: export_onnx(model, QUALITY, output_dir / f"{QUALITY.name}.onnx", seed),
        POLICY.name: export_onnx(actor, POLICY, output_dir / f"{POLICY.name}.onnx", seed),
    }
    (output_dir / TIER1_FILE).write_text(json.dumps({**mapping.to_json(), "tier2_margin": margin}, indent=1))
    timings["total_s"] = time.perf_counter() - start
    report = {
        "images": len(paths),
        "rows": int(len(table.ssim)),
        "samples_per_image": samples_per_image,
        "seed": seed,
        "predictor": predictor_metrics,
        "tier2_margin": margin,
        "tier2_margin_trials": margin_trials,
        "ppo": ppo_metrics,
        "onnx_max_abs_error": errors,
        "timings": timings,
    }
    (output_dir / "training_report.json").write_text(json.dumps(report, indent=1))
    logger.info("vectorize training done in %.0f s -> %s", timings["total_s"], output_dir)
    return report
