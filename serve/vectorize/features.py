"""Image features for parameter selection: a fixed-length float32 vector with named fields, and a class.

Features are computed on a copy downscaled so the longest side is at most :data:`WORK_SIDE` (box filter),
which
keeps them under 10 ms at 512x512 and makes them nearly independent of the input size. All values are roughly
in
``[0, 1]``.
"""

from __future__ import annotations

import enum
import math

import numpy as np
from PIL import Image

WORK_SIDE = 128

FEATURE_NAMES: tuple[str, ...] = (
    "edge_density",
    "gradient_strength",
    "unique_colors",
    "colors_95",
    "entropy",
    "corner_density",
    "white_fraction",
    "saturation",
    "smooth_fraction",
    "laplacian_energy",
    "dark_fraction",
    "bbox_fill",
    "colorfulness",
    "top_color_share",
    "log_side",
    "aspect",
)
F = len(FEATURE_NAMES)


class ImageClass(enum.StrEnum):
    """Coarse image kind, used by the ``auto`` tier."""

    SIMPLE = "simple"
    TEXT = "text"
    GRADIENT = "gradient"
    COMPLEX = "complex"


def _downscale(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    if max(height, width) <= WORK_SIDE:
        return pixels
    scale = WORK_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))


def _colour_counts(pixels: np.ndarray, bits: int) -> np.ndarray:
    q = (pixels >> (8 - bits)).astype(np.int32)
    codes = (q[..., 0] << (2 * bits)) | (q[..., 1] << bits) | q[..., 2]
    counts = np.bincount(codes.reshape(-1), minlength=1 << (3 * bits))
    return counts[counts > 0]


def _entropy(grey: np.ndarray) -> float:
    """The entropy of a grey image's 64-bin histogram, over its largest (6 bits)."""
    hist = np.bincount((grey * 63.999).astype(np.int32).reshape(-1), minlength=64) / grey.size
    nz = hist[hist > 0]
    return float(-(nz * np.log2(nz)).sum()) / 6.0


def _harris(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Harris's corner response (``k`` 0.05, a 3x3 window) of a grey image's gradients."""
    from scipy.ndimage import uniform_filter  # here: half a second of import that the Gateway never pays

    ixx = uniform_filter(gx * gx, 3)
    iyy = uniform_filter(gy * gy, 3)
    ixy = uniform_filter(gx * gy, 3)
    return ixx * iyy - ixy * ixy - 0.05 * (ixx + iyy) ** 2


def _colorfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness of an RGB image in ``[0, 1]`` floats."""
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())


def compute_features(pixels: np.ndarray) -> np.ndarray:
    """Features of an RGB uint8 image, in :data:`FEATURE_NAMES` order, as float32.

    Args:
        pixels: ``(H, W, 3)`` uint8 RGB.

    Returns:
        A ``(F,)`` float32 vector.
    """
    height, width = pixels.shape[:2]
    small = _downscale(pixels)
    rgb = small.astype(np.float32) / 255.0
    grey = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    n = grey.size

    white = np.all(small >= 245, axis=2)
    foreground = ~white
    n_fg = max(int(foreground.sum()), 1)

    counts5 = _colour_counts(small, 5)
    counts4 = np.sort(_colour_counts(small, 4))[::-1]
    n95 = int(np.searchsorted(np.cumsum(counts4), 0.95 * n) + 1)

    harris = _harris(gx, gy)
    lap = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])

    cmax, cmin = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)

    rows, cols = np.nonzero(foreground)
    bbox = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) if rows.size else 1
    fg_counts = _colour_counts(small[foreground], 4) if rows.size else np.asarray([1])

    values = (
        float((magnitude > 0.125).mean()),
        float(magnitude.mean() * 4.0),
        math.log2(1 + counts5.size) / 15.0,
        math.log2(1 + n95) / 12.0,
        _entropy(grey),
        float((harris > 1e-4).mean()) * 4.0,
        float(white.mean()),
        float(sat[foreground].mean()) if rows.size else 0.0,
        float(((magnitude > 0.004) & (magnitude < 0.06) & foreground).sum() / n_fg),
        float(lap.mean() * 4.0) if lap.size else 0.0,
        float((grey < 0.25).mean()),
        float(n_fg / bbox) if rows.size else 0.0,
        min(_colorfulness(rgb), 1.0),
        float(fg_counts.max() / fg_counts.sum()),
        math.log2(max(height, width) / 256.0) / 4.0,
        min(height, width) / max(height, width),
    )
    return np.asarray(values, dtype=np.float32)


def feature_dict(features: np.ndarray) -> dict[str, float]:
    """Name each value of a feature vector."""
    return {name: float(v) for name, v in zip(FEATURE_NAMES, features, strict=True)}


CLASS_RULES: tuple[tuple[ImageClass, tuple[tuple[str, str, float], ...]], ...] = (
    (ImageClass.GRADIENT, (("smooth_fraction", ">", 0.12),)),  # wide areas of slowly changing colour
    (ImageClass.TEXT, (("saturation", "<", 0.15), ("edge_density", ">", 0.08), ("dark_fraction", ">", 0.02))),
    (ImageClass.COMPLEX, (("unique_colors", ">", 0.45), ("entropy", ">", 0.5))),  # many colours, busy histogram
)
"""The classes in the order they are tried, each with the feature thresholds it needs (all of them); none: simple.
Thresholds set from the Breeze training set's percentiles."""
CONFIDENCE_SCALE = 0.25
"""A class decided by a relative margin this wide (from the nearest threshold) has a confidence of about 0.88."""


def _rule_margin(f: dict[str, float], conditions: tuple[tuple[str, str, float], ...]) -> float:
    """How far a rule is inside its thresholds, relative to each (> 0: it holds; its weakest condition decides)."""
    return min(((f[n] - t) if op == ">" else (t - f[n])) / t for n, op, t in conditions)


def classify_with_confidence(features: np.ndarray) -> tuple[ImageClass, float]:
    """The coarse class and a confidence in ``[0.5, 1)``: how far the features sit from the thresholds that decided it.

    The margin is the smallest relative distance among the deciding rule's conditions and the earlier rules' failed
    ones; the confidence is ``0.5 + 0.5 * tanh(margin / CONFIDENCE_SCALE)``.
    """
    f = feature_dict(features)
    margins: list[float] = []
    for image_class, conditions in CLASS_RULES:
        margin = _rule_margin(f, conditions)
        if margin > 0:
            return image_class, _confidence(min([margin, *margins]))
        margins.append(-margin)
    return ImageClass.SIMPLE, _confidence(min(margins))


def _confidence(margin: float) -> float:
    return round(0.5 + 0.5 * math.tanh(margin / CONFIDENCE_SCALE), 4)


def classify(features: np.ndarray) -> ImageClass:
    """The coarse class auto dispatches on (:data:`CLASS_RULES`)."""
    return classify_with_confidence(features)[0]
