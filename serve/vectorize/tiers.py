"""Parameter selection tiers. The same code runs with in-process ONNX Runtime models and with Triton clients.

* tier 1: nearest feature centroid -> a fitted parameter set (JSON, microseconds).
* tier 2: score K candidate parameter sets (defaults, presets, tier 1's answer, the training images' best-found
  parameter sets) with the quality predictor; pick the smallest predicted SVG among those whose predicted SSIM is
  at least tier 1's (and the defaults') plus ``margin``, else tier 1's answer (see :func:`pick`).
* tier 3: the PPO policy's deterministic action.
* auto: picks a tier from the image class and a time budget.

Parameters are learned at a 256 px reference size; :func:`choose` rescales the pixel-sized ones to the image.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from serve.vectorize.convert import Conversion, render, ssim, vectorize
from serve.vectorize.features import ImageClass, classify, compute_features
from serve.vectorize.params import (
    DEFAULTS,
    PRESETS,
    P,
    VtracerParams,
    from_vector,
    sample_vectors,
    scale_to_size,
    to_vector,
)

logger = logging.getLogger(__name__)

TIERS = ("tier1", "tier2", "tier3", "auto")


class Predictor(Protocol):
    """Quality predictor: ``(N, F)`` features, ``(N, P)`` parameters -> ``(N,)`` SSIM, ``(N,)`` ln bytes."""

    def __call__(self, features: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predict SSIM and log bytes."""
        ...


class Policy(Protocol):
    """Policy: ``(N, F)`` float32 features -> ``(N, P)`` parameter vectors in ``[0, 1]``."""

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Emit parameter vectors."""
        ...


@dataclass(frozen=True)
class Tier1Map:
    """Nearest-centroid mapping from standardised features to a parameter vector per centroid."""

    mean: np.ndarray
    std: np.ndarray
    centroids: np.ndarray
    params: np.ndarray
    bank: np.ndarray | None = None
    radius: np.ndarray | None = None  # per cluster: 95th percentile distance of its training images

    def nearest(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid index and distance (standardised feature space) for each row of ``features``."""
        z = (np.atleast_2d(features) - self.mean) / self.std
        d = np.sqrt(((z[:, None, :] - self.centroids[None]) ** 2).sum(-1))
        index = np.argmin(d, axis=1)
        return index, d[np.arange(len(d)), index]

    def familiar(self, features: np.ndarray) -> bool:
        """Whether the first row of ``features`` lies within its cluster's training radius (True if unknown)."""
        if self.radius is None:
            return True
        index, distance = self.nearest(features)
        return bool(distance[0] <= self.radius[index[0]])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Parameter vectors ``(N, P)`` for features ``(N, F)``."""
        return self.params[self.nearest(features)[0]]

    def to_json(self) -> dict:
        """A JSON-serialisable form, with the decoded parameters for readers."""
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "centroids": self.centroids.tolist(),
            "params": self.params.tolist(),
            "decoded": [from_vector(p).kwargs() for p in self.params],
            **({"bank": self.bank.tolist()} if self.bank is not None else {}),
            **({"radius": self.radius.tolist()} if self.radius is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> Tier1Map:
        """Rebuild from :meth:`to_json` output."""
        arrays = {k: np.asarray(data[k], dtype=np.float32) for k in ("mean", "std", "centroids", "params")}
        if data.get("radius") is not None:
            arrays["radius"] = np.asarray(data["radius"], dtype=np.float32).reshape(-1)
        if data.get("bank") is not None:
            arrays["bank"] = np.asarray(data["bank"], dtype=np.float32).reshape(-1, P)
        if arrays["params"].shape[1] != P or arrays["centroids"].shape != (
            len(arrays["params"]),
            len(arrays["mean"]),
        ):
            raise ValueError("tier 1 mapping has inconsistent shapes")
        return cls(**arrays)

    @classmethod
    def load(cls, path: Path) -> Tier1Map:
        """Read a mapping written as JSON."""
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Choice:
    """A chosen parameter set and, where a predictor was used, its predicted quality."""

    params: VtracerParams
    tier: str
    predicted_ssim: float | None = None
    predicted_bytes: float | None = None


_BANK_SIZE = 256
TIER1_ROW = 1 + len(PRESETS)  # tier 1's answer in :func:`candidates` (after the defaults and the presets)
_BANK = sample_vectors(np.random.default_rng(12345), _BANK_SIZE)


def tier1(features: np.ndarray, mapping: Tier1Map) -> Choice:
    """Tier 1: the fitted parameter set of the nearest feature centroid."""
    return Choice(from_vector(mapping(features)[0]), "tier1")


def candidates(features: np.ndarray, mapping: Tier1Map | None = None, bank: np.ndarray | None = None) -> np.ndarray:
    """Candidate vectors for tier 2: defaults first, then presets, tier 1's answer and a bank.

    The bank is ``bank`` if given, else the mapping's (the best-found parameters of the training images), else a
    fixed random sample of the parameter space.
    """
    rows = [to_vector(DEFAULTS), *(to_vector(p) for p in PRESETS.values())]
    if mapping is not None:
        rows.append(mapping(features)[0])
        if bank is None:
            bank = mapping.bank
    return np.concatenate([np.stack(rows), _BANK if bank is None else bank]).astype(np.float32)


def pick(ssim: np.ndarray, log_bytes: np.ndarray, margin: float, reference: int = 0) -> int:
    """Index of the smallest ``log_bytes`` whose ``ssim`` is at least the reference's and the defaults' + margin.

    Row 0 is the defaults; ``reference`` (tier 1's answer when there is one) always qualifies, so tier 2 only
    leaves it for a candidate the predictor rates better by ``margin``. Without a reference (0), falls back to
    the highest predicted SSIM when nothing qualifies.
    """
    ok = ssim >= max(ssim[0], ssim[reference]) + margin
    if reference:
        ok[reference] = True
    if not ok.any():
        return int(np.argmax(ssim))
    return int(np.flatnonzero(ok)[np.argmin(log_bytes[ok])])


def tier2(features: np.ndarray, predictor: Predictor, mapping: Tier1Map | None = None, margin: float = 0.005) -> Choice:
    """Tier 2: the best predicted quality-for-size among K candidates (see :func:`pick`).

    For an image outside the training distribution (farther from its tier 1 centroid than 95 % of that cluster's
    training images) the predictor is not trusted and tier 1's answer is returned.
    """
    if mapping is not None and not mapping.familiar(features):
        return Choice(tier1(features, mapping).params, "tier2:unfamiliar->tier1")
    vectors = candidates(features, mapping)
    batch = np.repeat(np.atleast_2d(features).astype(np.float32), len(vectors), axis=0)
    ssim, log_bytes = predictor(batch, vectors)
    ssim, log_bytes = np.asarray(ssim).reshape(-1), np.asarray(log_bytes).reshape(-1)
    best = pick(ssim, log_bytes, margin, reference=TIER1_ROW if mapping is not None else 0)
    return Choice(from_vector(vectors[best]), "tier2", float(ssim[best]), float(np.exp(log_bytes[best])))


def tier3(features: np.ndarray, policy: Policy) -> Choice:
    """Tier 3: the policy's parameter vector."""
    return Choice(from_vector(np.asarray(policy(np.atleast_2d(features).astype(np.float32)))[0]), "tier3")


def auto(
    features: np.ndarray,
    mapping: Tier1Map | None,
    predictor: Predictor | None,
    policy: Policy | None,
    budget_ms: float = 300.0,
    margin: float = 0.005,
) -> Choice:
    """Pick a tier by image class and time budget, degrading to what is available (defaults last).

    Gradient and complex images, where the predictor's search pays most, use tier 2 when the budget allows
    (>= 50 ms of selection time); other images use the policy, then tier 2, then tier 1.
    """
    kind = classify(features)
    if predictor is not None and budget_ms >= 50 and kind in (ImageClass.GRADIENT, ImageClass.COMPLEX):
        choice = tier2(features, predictor, mapping, margin)
    elif policy is not None:
        choice = tier3(features, policy)
    elif predictor is not None and budget_ms >= 50:
        choice = tier2(features, predictor, mapping, margin)
    elif mapping is not None:
        choice = tier1(features, mapping)
    else:
        logger.warning("no vectorize models available; using vtracer defaults")
        return Choice(DEFAULTS, "defaults")
    return Choice(choice.params, f"auto:{choice.tier}", choice.predicted_ssim, choice.predicted_bytes)


@dataclass(frozen=True)
class Verified:
    """A choice checked by real conversion: its SVG and the SSIM of the SVG rendered back."""

    choice: Choice
    conversion: Conversion
    ssim: float


def sized(choice: Choice, side: int) -> Choice:
    """``choice`` with its pixel-sized parameters rescaled to an image whose longest side is ``side``."""
    if choice.tier == "defaults":
        return choice  # the fallback stays exactly vtracer's defaults
    return Choice(scale_to_size(choice.params, side), choice.tier, choice.predicted_ssim, choice.predicted_bytes)


def verify_tier2(pixels: np.ndarray, choice: Choice, features: np.ndarray, mapping: Tier1Map | None) -> Verified | None:
    """Tier 2's search ends with a real check: its pick is kept unless tier 1's answer scores a higher SSIM.

    Both are converted and rendered back (two conversions at most), so the predictor's mistakes on unfamiliar
    images cost size, not quality. Returns None for choices that are not tier 2's.
    """
    if not choice.tier.removeprefix("auto:").startswith("tier2"):
        return None
    side = max(pixels.shape[:2])
    reference = sized(tier1(features, mapping), side) if mapping is not None else Choice(DEFAULTS, "defaults")
    mine = _convert_and_score(pixels, choice.params)
    if reference.params == choice.params:
        return Verified(choice, *mine)
    theirs = _convert_and_score(pixels, reference.params)
    if mine[1] >= theirs[1]:
        return Verified(choice, *mine)
    return Verified(Choice(reference.params, f"{choice.tier}:verified->{reference.tier}"), *theirs)


def _convert_and_score(pixels: np.ndarray, params: VtracerParams) -> tuple[Conversion, float]:
    conversion = vectorize(pixels, params)
    return conversion, ssim(pixels, render(conversion.svg, pixels.shape[1], pixels.shape[0]))


def choose(
    pixels: np.ndarray,
    tier: str,
    mapping: Tier1Map | None = None,
    predictor: Predictor | None = None,
    policy: Policy | None = None,
    budget_ms: float = 300.0,
    margin: float = 0.005,
) -> Choice:
    """Features -> tier -> parameters rescaled to the image size (tier 2's pick verified, see :func:`verify_tier2`).

    Raises:
        ValueError: Unknown tier, or the tier's model is missing.
    """
    features = compute_features(pixels)
    if tier == "tier1" and mapping is not None:
        choice = tier1(features, mapping)
    elif tier == "tier2" and predictor is not None:
        choice = tier2(features, predictor, mapping, margin)
    elif tier == "tier3" and policy is not None:
        choice = tier3(features, policy)
    elif tier == "auto":
        choice = auto(features, mapping, predictor, policy, budget_ms, margin)
    else:
        raise ValueError(f"tier {tier!r} is unknown or its model is not loaded (known: {', '.join(TIERS)})")
    choice = sized(choice, max(pixels.shape[:2]))
    verified = verify_tier2(pixels, choice, features, mapping)
    return verified.choice if verified else choice
