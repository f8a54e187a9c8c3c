"""Training table: every training image converted under the defaults, the presets and sampled parameter sets.

The table is cached as a compressed ``.npz`` under the cache directory (``$EASEL_HOME`` or
``~/.cache/easel``),
keyed by the image list, the sample count and the seed, and reused when present.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.images.raster import load_image, resize
from serve.vectorize.convert import score
from serve.vectorize.features import compute_features
from serve.vectorize.params import DEFAULTS, PRESETS, from_vector, sample_vectors, to_vector

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_VERSION = 2


def cache_dir() -> Path:
    """The cache root: ``$EASEL_HOME`` or ``~/.cache/easel``."""
    return Path(os.environ.get("EASEL_HOME", Path.home() / ".cache" / "easel"))


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """Sorted PNG/JPEG files in ``folder`` (first ``limit`` if given)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[:limit] if limit else files


@dataclass
class Table:
    """Conversion results, one row per (image, parameter set); first 4 per image: defaults, presets."""

    features: np.ndarray  # (n_images, F)
    image: np.ndarray  # (rows,) image index
    params: np.ndarray  # (rows, P)
    ssim: np.ndarray  # (rows,)
    n_bytes: np.ndarray  # (rows,)
    n_paths: np.ndarray  # (rows,)
    seconds: np.ndarray  # (rows,)
    names: np.ndarray  # (n_images,) file names

    def save(self, path: Path) -> None:
        """Write the table as a compressed npz."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **self.__dict__)

    @classmethod
    def load(cls, path: Path) -> Table:
        """Read a table written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls(**{k: data[k] for k in data.files})


def _image_rows(job: tuple[str, int, int, int]) -> tuple[np.ndarray, list[tuple]]:
    path, samples, seed, size = job
    pixels = resize(load_image(path), size)
    named = [to_vector(DEFAULTS), *(to_vector(p) for p in PRESETS.values())]
    digest = int.from_bytes(hashlib.sha256(Path(path).name.encode()).digest()[:4], "little")
    rng = np.random.default_rng([seed, digest])
    vectors = np.concatenate([np.stack(named), sample_vectors(rng, samples)])
    rows = []
    for vector in vectors:
        result = score(pixels, from_vector(vector))
        rows.append((vector, result.ssim, result.n_bytes, result.n_paths, result.convert_s))
    return compute_features(pixels), rows


def build_table(
    images: list[Path],
    samples: int,
    seed: int,
    size: int = 256,
    processes: int = 2,
    cache: Path | None = None,
) -> Table:
    """Convert every image under the defaults, presets and ``samples`` random parameter sets.

    Args:
        images: Training image files.
        samples: Random parameter sets per image.
        seed: Seed for the parameter sampler (each image gets its own stream).
        size: Images are resized so the longest side is ``size``.
        processes: Worker processes (vtracer holds the GIL).
        cache: Cache folder; None disables caching.

    Returns:
        The table.
    """
    key = hashlib.sha256(
        repr((TABLE_VERSION, [(p.name, p.stat().st_size) for p in images], samples, seed, size)).encode()
    ).hexdigest()[:16]
    path = cache / f"vectorize-table-{key}.npz" if cache else None
    if path is not None and path.exists():
        logger.info("using cached training table %s", path)
        return Table.load(path)
    jobs = [(str(p), samples, seed, size) for p in images]
    start = time.perf_counter()
    features, image, rows = [], [], []
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) if processes > 1 else _Serial() as pool:
        for i, (x, image_rows) in enumerate(pool.imap(_image_rows, jobs)):
            features.append(x)
            image += [i] * len(image_rows)
            rows += image_rows
            if (i + 1) % max(1, len(jobs) // 20) == 0 or i + 1 == len(jobs):
                logger.info("conversions: %d/%d images, %.0f s", i + 1, len(jobs), time.perf_counter() - start)
    table = Table(
        features=np.stack(features).astype(np.float32),
        image=np.asarray(image, dtype=np.int32),
        params=np.stack([r[0] for r in rows]).astype(np.float32),
        ssim=np.asarray([r[1] for r in rows], dtype=np.float32),
        n_bytes=np.asarray([r[2] for r in rows], dtype=np.int64),
        n_paths=np.asarray([r[3] for r in rows], dtype=np.int32),
        seconds=np.asarray([r[4] for r in rows], dtype=np.float32),
        names=np.asarray([p.name for p in images]),
    )
    if path is not None:
        table.save(path)
        logger.info("cached training table %s (%d rows)", path, len(table.ssim))
    return table


def merge_tables(tables: list[Table]) -> Table:
    """Concatenate tables of different image sets (image indices are offset)."""
    offsets = np.cumsum([0, *(len(t.features) for t in tables[:-1])])
    return Table(
        features=np.concatenate([t.features for t in tables]),
        image=np.concatenate([t.image + o for t, o in zip(tables, offsets, strict=True)]).astype(np.int32),
        params=np.concatenate([t.params for t in tables]),
        ssim=np.concatenate([t.ssim for t in tables]),
        n_bytes=np.concatenate([t.n_bytes for t in tables]),
        n_paths=np.concatenate([t.n_paths for t in tables]),
        seconds=np.concatenate([t.seconds for t in tables]),
        names=np.concatenate([t.names for t in tables]),
    )


def _score_job(job: tuple[str, np.ndarray, int]) -> list[tuple]:
    path, vectors, size = job
    pixels = resize(load_image(path), size)
    rows = []
    for vector in vectors:
        result = score(pixels, from_vector(vector))
        rows.append((vector, result.ssim, result.n_bytes, result.n_paths, result.convert_s))
    return rows


def extend_table(
    table: Table, paths: list[Path], images: np.ndarray, vectors: np.ndarray, size: int, processes: int
) -> Table:
    """A copy of ``table`` with real conversions of ``vectors[k]`` (``(n, m, P)``) on image ``images[k]`` added."""
    jobs = [(str(paths[i]), vectors[k], size) for k, i in enumerate(images)]
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) if processes > 1 else _Serial() as pool:
        results = list(pool.imap(_score_job, jobs))
    rows = [(i, row) for i, image_rows in zip(images, results, strict=True) for row in image_rows]
    return Table(
        features=table.features,
        image=np.concatenate([table.image, np.asarray([i for i, _ in rows], dtype=np.int32)]),
        params=np.concatenate([table.params, np.stack([r[0] for _, r in rows]).astype(np.float32)]),
        ssim=np.concatenate([table.ssim, np.asarray([r[1] for _, r in rows], dtype=np.float32)]),
        n_bytes=np.concatenate([table.n_bytes, np.asarray([r[2] for _, r in rows], dtype=np.int64)]),
        n_paths=np.concatenate([table.n_paths, np.asarray([r[3] for _, r in rows], dtype=np.int32)]),
        seconds=np.concatenate([table.seconds, np.asarray([r[4] for _, r in rows], dtype=np.float32)]),
        names=table.names,
    )


class _Serial:
    """A stand-in for a process pool that maps in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def imap(self, fn, jobs):
        """Lazily apply ``fn`` to each job."""
        return map(fn, jobs)
