"""Tier 1 fitting: k-means over standardised features, one parameter set per cluster.

Each cluster's parameter set minimises the predicted mean ln(bytes) over its training images subject to the
predicted mean SSIM being at least the defaults' plus a margin; the best few predicted candidates are then
checked
with real conversions of (up to ``verify_images``) cluster images and the smallest one that keeps the real
mean SSIM
at or above the defaults' wins.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from build_engines.vectorize.dataset import Table
from serve.vectorize.convert import score
from serve.vectorize.image import load_image, resize
from serve.vectorize.params import from_vector
from serve.vectorize.tiers import Predictor, Tier1Map, candidates

logger = logging.getLogger(__name__)


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
    shortlist: int = 5,
    verify_images: int = 10,
    size: int = 256,
) -> Tier1Map:
    """Fit the tier 1 mapping (see module docstring); ``image_paths`` are the table's images, in order."""
    mean, std = table.features.mean(0), table.features.std(0) + 1e-3
    z = (table.features - mean) / std
    centroids = kmeans(z, k, seed)
    labels = np.argmin(((z[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    bank = candidates(table.features[0], bank=_bank(seed))[[0, 1, 2, 3, *range(4, 4 + 2048)]]
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
        ok = np.flatnonzero(ssim >= ssim[0] + margin)
        order = ok[np.argsort(log_bytes[ok])][:shortlist] if ok.size else np.asarray([0])
        sample = rng.permutation(members)[:verify_images]
        best = _verify(table, bank[order], sample, image_paths, size) if verify_images else 0
        chosen.append(bank[order[best]])
        logger.info("tier1 cluster %d: %d images -> %s", j, members.size, from_vector(chosen[-1]))
    return Tier1Map(
        mean.astype(np.float32),
        std.astype(np.float32),
        centroids.astype(np.float32),
        np.stack(chosen).astype(np.float32),
    )


def _bank(seed: int) -> np.ndarray:
    from serve.vectorize.params import sample_vectors

    return sample_vectors(np.random.default_rng([seed, 1]), 2048)


def _verify(table: Table, shortlist: np.ndarray, images: np.ndarray, paths: list[Path], size: int) -> int:
    """Index in ``shortlist`` of the smallest real mean ln(bytes) whose real mean SSIM >= the defaults'."""
    default_rows = np.asarray([np.flatnonzero(table.image == i)[0] for i in images])
    default_ssim = float(table.ssim[default_rows].mean())
    pixels = [resize(load_image(paths[i]), size) for i in images]
    results = []
    for vector in shortlist:
        scores = [score(p, from_vector(vector)) for p in pixels]
        results.append((np.mean([s.ssim for s in scores]), np.mean([np.log(s.n_bytes) for s in scores])))
    ok = [i for i, (s, _) in enumerate(results) if s >= default_ssim]
    if not ok:
        return int(np.argmax([s for s, _ in results]))
    return min(ok, key=lambda i: results[i][1])
