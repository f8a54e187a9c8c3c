"""The vtracer parameter space, its named points (defaults, presets) and the normalised vector the models use.

Each parameter maps to one coordinate in ``[0, 1]``; :func:`from_vector` clips, rounds and decodes any vector,
so a
model output is always a valid parameter set. Categorical parameters: ``colormode`` (< 0.5 colour, else
binary),
``hierarchical`` (< 0.5 stacked, else cutout), ``mode`` (thirds: pixel, polygon, spline). Speckle size and
layer
difference use a ``log1p`` scale so small values keep resolution.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

MODES = ("pixel", "polygon", "spline")


@dataclass(frozen=True)
class VtracerParams:
    """One vtracer parameter set (the keyword arguments of ``vtracer.convert_*``).

    ``colormode="binary"`` thresholds the red channel at 128 inside vtracer; :mod:`serve.vectorize.convert`
    feeds it
    luminance in every channel so binary means light/dark.
    """

    colormode: str = "color"
    hierarchical: str = "stacked"
    mode: str = "spline"
    filter_speckle: int = 4
    color_precision: int = 6
    layer_difference: int = 16
    corner_threshold: int = 60
    length_threshold: float = 4.0
    max_iterations: int = 10
    splice_threshold: int = 45
    path_precision: int = 2

    def __post_init__(self) -> None:
        if self.colormode not in ("color", "binary"):
            raise ValueError(f"colormode must be 'color' or 'binary', not {self.colormode!r}")
        if self.hierarchical not in ("stacked", "cutout"):
            raise ValueError(f"hierarchical must be 'stacked' or 'cutout', not {self.hierarchical!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}={value} is outside [{low}, {high}]")

    def kwargs(self) -> dict:
        """Keyword arguments for vtracer."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> VtracerParams:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


# Numeric ranges: (low, high). Coarser than vtracer accepts where the extremes are never useful.
_RANGES: dict[str, tuple[float, float]] = {
    "filter_speckle": (0, 64),
    "color_precision": (1, 8),
    "layer_difference": (0, 128),
    "corner_threshold": (0, 180),
    "length_threshold": (3.5, 10.0),
    "max_iterations": (1, 20),
    "splice_threshold": (0, 180),
    "path_precision": (0, 4),
}
_LOG_SCALED = ("filter_speckle", "layer_difference")

VECTOR_FIELDS: tuple[str, ...] = ("colormode", "hierarchical", "mode", *_RANGES)
P = len(VECTOR_FIELDS)

DEFAULTS = VtracerParams()
"""vtracer's defaults with ``path_precision=2`` (the vtracer CLI default; see EVAL.md)."""

PRESETS: dict[str, VtracerParams] = {
    "poster": VtracerParams(color_precision=8, layer_difference=16),
    "photo": VtracerParams(filter_speckle=10, color_precision=8, layer_difference=48, corner_threshold=180),
    "bw": VtracerParams(colormode="binary"),
}
"""vtracer's presets (its ``Preset`` enum), all with ``path_precision=2`` like the defaults."""


def _scale(name: str, value: float) -> float:
    low, high = _RANGES[name]
    if name in _LOG_SCALED:
        return math.log1p(value - low) / math.log1p(high - low)
    return (value - low) / (high - low)


def _unscale(name: str, unit: float) -> float:
    low, high = _RANGES[name]
    if name in _LOG_SCALED:
        return low + math.expm1(unit * math.log1p(high - low))
    return low + unit * (high - low)


def to_vector(params: VtracerParams) -> np.ndarray:
    """Encode ``params`` as a float32 vector in ``[0, 1]^P`` (categoricals at their bin centres)."""
    values = [
        0.75 if params.colormode == "binary" else 0.25,
        0.75 if params.hierarchical == "cutout" else 0.25,
        (MODES.index(params.mode) + 0.5) / len(MODES),
    ]
    values += [_scale(name, getattr(params, name)) for name in _RANGES]
    return np.asarray(values, dtype=np.float32)


def from_vector(vector: np.ndarray) -> VtracerParams:
    """Decode any length-``P`` vector (clipped to ``[0, 1]``) into a valid parameter set."""
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    if vector.shape[0] != P:
        raise ValueError(f"parameter vector must have {P} values, got {vector.shape[0]}")
    unit = np.clip(np.nan_to_num(vector, nan=0.5), 0.0, 1.0)
    fields: dict = {
        "colormode": "binary" if unit[0] >= 0.5 else "color",
        "hierarchical": "cutout" if unit[1] >= 0.5 else "stacked",
        "mode": MODES[min(int(unit[2] * len(MODES)), len(MODES) - 1)],
    }
    for i, name in enumerate(_RANGES, start=3):
        value = min(max(_unscale(name, float(unit[i])), _RANGES[name][0]), _RANGES[name][1])
        fields[name] = round(value, 2) if name == "length_threshold" else int(round(value))
    return VtracerParams(**fields)


def scale_to_size(params: VtracerParams, side: int, reference: int = 256) -> VtracerParams:
    """Scale pixel-sized parameters learned at ``reference`` px to an image whose longest side is ``side``."""
    factor = side / reference
    if abs(factor - 1.0) < 1e-6:
        return params
    low, high = _RANGES["filter_speckle"]
    speckle = int(min(max(round(params.filter_speckle * factor), low), high))
    return params.replace(filter_speckle=speckle)


def sample_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    """Draw ``count`` random parameter vectors, biased towards the useful part of the space.

    Colour mode is chosen 90 % of the time and pixel mode 5 %, since binary and pixel output rarely win on
    icons
    but must still be seen by the models.
    """
    vectors = rng.random((count, P)).astype(np.float32)
    vectors[:, 0] = np.where(rng.random(count) < 0.1, 0.75, 0.25)
    vectors[:, 1] = np.where(rng.random(count) < 0.3, 0.75, 0.25)
    mode = rng.choice(3, size=count, p=[0.05, 0.55, 0.4])
    vectors[:, 2] = (mode + 0.5) / 3.0
    return np.stack([to_vector(from_vector(v)) for v in vectors])
