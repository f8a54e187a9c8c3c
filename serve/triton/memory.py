"""How much memory and time an engine needs, measured once per engine at build time, and the budgets it runs within.

An engine's peak is its resident weights plus, per batch row, ``a + b p + c p^2`` bytes, where ``p`` is the number
of positions in its dynamic axes (latent height x width for the UNet and the VAE decoder; 1 for the text encoder):
the quadratic term is attention over every position. The coefficients are fitted to peaks measured with ONNX
Runtime (arena off, as served) at a few small sizes; :meth:`MemoryModel.per_row` adds a safety margin. The seconds
one row takes on one core are fitted the same way (:meth:`MemoryModel.seconds_per_row`): admission refuses sizes
whose row is too slow, and the pipeline sizes its engine calls so that none holds an engine for long.

A model's engines share one activation pool (:func:`activation_pool`: the budget less their weights). The python
backend splits every batch into runs of at most :meth:`MemoryModel.rows_within` rows of the pool, and reserves each
run's bytes from it while the run lasts (:mod:`serve.triton.activations`), so Triton's memory stays bounded whatever
its dynamic batcher merges and whatever engines run at once; the text-to-image replica refuses (400) a size whose
single row does not fit the pool, and decodes images in tiles when one row of the VAE does not.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)

SAFETY = 1.25
"""Measured peaks are scaled by this before any decision (allocator overhead, fragmentation, drift between sizes)."""
DEFAULT_BUDGET_SHARE = 0.4
"""Default activation share: the engines may use this share of the memory their weights leave of the machine's."""


@dataclass(frozen=True)
class MemoryModel:
    """An engine's resident weights and its activation bytes per batch row, as a function of positions."""

    weights_bytes: int
    coefficients: tuple[float, float, float]
    measured: tuple[tuple[int, int], ...] = ()  # (positions, bytes of one row) as measured
    seconds: tuple[float, float, float] | None = None  # one row's time on one core; None: not measured
    measured_seconds: tuple[tuple[int, float], ...] = ()

    def per_row(self, positions: int) -> int:
        """Activation bytes one batch row needs at ``positions``, with the safety margin."""
        a, b, c = self.coefficients
        return int(SAFETY * max(0.0, a + b * positions + c * positions * positions))

    def seconds_per_row(self, positions: int) -> float:
        """Seconds one batch row takes at ``positions`` on one core (0 when the time was not measured)."""
        if self.seconds is None:
            return 0.0
        a, b, c = self.seconds
        return max(0.0, a + b * positions + c * positions * positions)

    def rows_within(self, budget_bytes: int, positions: int) -> int:
        """How many rows fit in ``budget_bytes`` of activations at ``positions`` (0 if not even one).

        An engine whose rows measured nothing (too small to see) is not split.
        """
        need = self.per_row(positions)
        return budget_bytes // need if need > 0 else sys.maxsize

    @classmethod
    def load(cls, path: Path) -> MemoryModel:
        """Read a model written by :meth:`save`."""
        raw = json.loads(path.read_text())
        return cls(
            raw["weights_bytes"],
            tuple(raw["coefficients"]),
            tuple(map(tuple, raw.get("measured", ()))),
            tuple(raw["seconds"]) if raw.get("seconds") else None,
            tuple(map(tuple, raw.get("measured_seconds", ()))),
        )

    @classmethod
    def fit(
        cls, weights_bytes: int, measured: list[tuple[int, int]], measured_seconds: list[tuple[int, float]] = ()
    ) -> MemoryModel:
        """Fit bytes (and, when given, seconds) per row through measured (positions, value) pairs."""
        seconds = _quadratic(measured_seconds) if measured_seconds else None
        return cls(int(weights_bytes), _quadratic(measured), tuple(measured), seconds, tuple(measured_seconds))


def _quadratic(measured) -> tuple[float, float, float]:
    """Non-negative least squares of ``a + b p + c p^2`` through (positions, value) pairs."""
    from scipy.optimize import nnls

    p = np.asarray([m[0] for m in measured], dtype=np.float64)
    y = np.asarray([m[1] for m in measured], dtype=np.float64)
    scale = max(1.0, float(p.max()))  # conditioning: fit in units of the largest size
    design = np.stack([np.ones_like(p), p / scale, (p / scale) ** 2], axis=1)
    (a, b, c), _ = nnls(design, y)
    return float(a), float(b / scale), float(c / scale**2)


def positions(shape: tuple[int, ...], dynamic_axes: tuple[int, ...]) -> int:
    """The product of a tensor's dynamic axes (batch axis excluded), 1 when it has none."""
    return math.prod(shape[axis] for axis in dynamic_axes) if dynamic_axes else 1


def peak_rss_reset() -> None:
    """Reset this process's peak resident set size (Linux: ``/proc/self/clear_refs``), so the next peak is new."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_bytes(peak: bool = False) -> int:
    """This process's resident set size now, or its peak since the last :func:`peak_rss_reset`."""
    key = "VmHWM:" if peak else "VmRSS:"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


# -- budgets: the stack's memory budget, and the activation pool its engines share ------------------------------------


class MemoryBudgetTooSmall(ValueError):
    """A memory budget that does not hold the engines' weights and fixed activations."""


def default_memory_budget(weights_bytes: int = 0) -> int:
    """The default memory budget: the engines' weights plus :data:`DEFAULT_BUDGET_SHARE` of what they leave.

    So a small model gets 40 % of the machine, and SDXL (13.7 GB of weights on a 24 GB machine) still has room for
    activations rather than a budget below its weights.
    """
    total = psutil.virtual_memory().total
    return int(weights_bytes + DEFAULT_BUDGET_SHARE * max(0, total - weights_bytes))


def activation_pool(models: dict[str, MemoryModel], specs: dict[str, ModelSpec], total_bytes: int) -> int:
    """The bytes the engines' activations share within ``total_bytes``: what their weights leave.

    Weights count once per Triton instance. The engines of a request run one after another and each run reserves
    its bytes from the pool while it lasts (:mod:`serve.triton.activations`), so one engine may use all of it when
    it runs alone. Raises :class:`MemoryBudgetTooSmall` when the pool cannot hold one row of every fixed-size engine
    (the text encoders: no request could run).
    """
    weights = sum(m.weights_bytes * specs[name].instance_count for name, m in models.items())
    pool = total_bytes - weights
    fixed = max((m.per_row(1) for m in models.values() if m.coefficients[1:] == (0, 0)), default=0)
    if pool <= 0 or pool < fixed:
        raise MemoryBudgetTooSmall(
            f"the memory budget {total_bytes / 2**30:.2f} GiB does not hold the engines' weights and one row of "
            f"each text encoder ({(weights + fixed) / 2**30:.2f} GiB)"
        )
    return pool
