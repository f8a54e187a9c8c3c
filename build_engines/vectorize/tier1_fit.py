"""Tier 1 fitting: k-means over standardised features, one parameter set per cluster.

For each cluster, the quality predictor shortlists the candidates with the smallest predicted mean ln(bytes)
whose predicted mean SSIM beats the defaults' by a margin (at three margins); real conversions of up to
``verify_images`` cluster images then pick the smallest one whose real mean SSIM beats the defaults' by
:data:`REAL_MARGIN`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from build_engines.vectorize.dataset import Table
from build_engines.vectorize.predictor import Predictor
from serve.images.raster import load_image, resize
from serve.vectorize.convert import score
from serve.vectorize.params import DEFAULTS, PRESETS, from_vector, sample_vectors, to_vector
from serve.vectorize.tiers import Tier1Map

logger = logging.getLogger(__name__)

REAL_MARGIN = 0.003  # the real mean SSIM over the checked images must beat the defaults' by this much


def kmeans(z: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Centroids of ``k`` clusters of rows of ``z`` (k-means++ seeding, Lloyd iterations)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(z))
    centroids = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d = np.min(((z[:, None] - np.stack(centroids)[None]) ** 2).sum(-1), axis=1)
        centroids.append(z[rng.choice(len(z), p=d / d.sum()) if d.sum() > 0 else rng.integers(len(z))])
    c = np.stack(centroids)
    for _ in range(iterations):
        labels = np.argmin(((z[:, None] - c[None]) ** 2).sum(-1), axis=1)
        c = np.stack([z[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
    return c


def fit_tier1(
    table: Table,
    predictor: Predictor,
    image_paths: list[Path],
    k: int,
    seed: int,
    margin: float = 0.003,
    shortlist: int = 6,
    verify_images: int = 16,
    size: int = 256,
) -> Tier1Map:
    """Fit the tier 1 mapping (see module docstring); ``image_paths`` are the table's images, in order."""
    mean, std = table.features.mean(0), table.features.std(0) + 1e-3
    z = (table.features - mean) / std
    centroids = kmeans(z, k, seed)
    labels = np.argmin(((z[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    named = [to_vector(DEFAULTS), *(to_vector(p) for p in PRESETS.values())]
    bank = np.concatenate([np.stack(named), sample_vectors(np.random.default_rng([seed, 1]), 2048)])
    rng = np.random.default_rng(seed)
    chosen = []
    for j in range(len(centroids)):
        members = np.flatnonzero(labels == j)
        if members.size == 0:
            chosen.append(bank[0])
            continue
        feats = np.repeat(table.features[members], len(bank), axis=0)
        ssim, log_bytes = predictor(feats, np.tile(bank, (members.size, 1)))
        ssim = ssim.reshape(members.size, len(bank)).mean(0)
        log_bytes = log_bytes.reshape(members.size, len(bank)).mean(0)
        order = _shortlist(ssim, log_bytes, margin, shortlist)
        sample = rng.permutation(members)[:verify_images]
        best = _verify(table, bank[order], sample, image_paths, size) if verify_images else 0
        chosen.append(bank[order[best]])
        logger.info("tier1 cluster %d: %d images -> %s", j, members.size, from_vector(chosen[-1]))
    distance = np.sqrt(((z - centroids[labels]) ** 2).sum(-1))
    radius = np.asarray(
        [np.percentile(distance[labels == j], 95) if (labels == j).any() else 0.0 for j in range(len(centroids))]
    )
    return Tier1Map(
        mean.astype(np.float32),
        std.astype(np.float32),
        centroids.astype(np.float32),
        np.stack(chosen).astype(np.float32),
        radius=radius.astype(np.float32),
    )


def _shortlist(ssim: np.ndarray, log_bytes: np.ndarray, margin: float, size: int) -> np.ndarray:
    """The smallest predicted candidates at margins ``margin``, ``3 margin`` and ``6 margin``, then defaults."""
    picked: list[int] = []
    for m in (margin, 3 * margin, 6 * margin):
        ok = np.flatnonzero(ssim >= ssim[0] + m)
        picked += [int(i) for i in ok[np.argsort(log_bytes[ok])] if i not in picked][: max(1, size // 3)]
    return np.asarray([*picked, 0])


def best_found(table: Table, images: np.ndarray, margin: float = 0.003) -> np.ndarray:
    """Tier 2's candidate bank: each image's smallest set whose real SSIM beats the defaults' by ``margin``.

    Images without one are skipped; duplicates are removed.
    """
    found = []
    for i in images:
        rows = np.flatnonzero(table.image == i)
        ok = rows[table.ssim[rows] >= table.ssim[rows[0]] + margin]
        if ok.size:
            found.append(table.params[ok[np.argmin(table.n_bytes[ok])]])
    if not found:
        return np.zeros((0, table.params.shape[1]), dtype=np.float32)
    return np.unique(np.round(np.stack(found), 5), axis=0).astype(np.float32)


def _verify(table: Table, shortlist: np.ndarray, images: np.ndarray, paths: list[Path], size: int) -> int:
    """Index in ``shortlist`` of the smallest real mean ln(bytes) whose real mean SSIM >= the defaults'."""
    default_rows = np.asarray([np.flatnonzero(table.image == i)[0] for i in images])
    default_ssim = float(table.ssim[default_rows].mean())
    pixels = [resize(load_image(paths[i]), size) for i in images]
    results = []
    for vector in shortlist:
        scores = [score(p, from_vector(vector)) for p in pixels]
        results.append((np.mean([s.ssim for s in scores]), np.mean([np.log(s.n_bytes) for s in scores])))
    ok = [i for i, (s, _) in enumerate(results) if s >= default_ssim + REAL_MARGIN]
    if not ok:
        return int(np.argmax([s for s, _ in results]))
    return min(ok, key=lambda i: results[i][1])
