"""The one dispatcher of vectorize: which tier answers, with which parameters, and why.

The tiers a request names (:class:`~serve.vectorize.schema.Tier`) are the API's vocabulary, with the request.

* tier 1: nearest feature centroid -> a fitted parameter set (its answer is candidate row :data:`TIER1_ROW`).
* tier 2: the quality predictor's scores of K candidate parameter sets (defaults, presets, tier 1's answer, a bank
  of best-found sets): the smallest predicted SVG among those predicted at least as good as tier 1's answer (and the
  defaults) plus a margin (see :func:`pick`); tier 1's answer for an image outside the training distribution.
* tier 3: the PPO policy's deterministic action (a residual around tier 1's answer) where the predictor trusts it
  (its predicted gain reaches tier 3's trust margin on a familiar image); tier 1's answer elsewhere.
* auto: tier 2 for gradient and complex images when the time budget allows, else tier 1 (which beat tier 3 on the dev
  set and every held-out style: docs/PERFORMANCE.md).
* default: vtracer's defaults.

Every model output the dispatcher needs comes in one :class:`Scores` (one ``vectorize`` ensemble answer in the
server, the same models in-process offline). :func:`choose` turns a request's tier into a :class:`Choice` (tier
asked, tier used, why); :func:`needs_check` decides cheaply whether the choice must be checked against the defaults
(the quality guarantee); :func:`answer` converts, checks when asked, and replaces a choice that lost with tier 1's
answer (its runner-up) or the defaults. Parameters are learned at a 256 px reference size; :func:`choose` rescales
the pixel-sized ones.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from serve.vectorize.convert import Conversion, render, ssim, vectorize
from serve.vectorize.features import ImageClass, classify
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
from serve.vectorize.schema import Preference, Tier

TIER1_FILE = "tier1.json"
DEFAULTS_ROW = 0
TIER1_ROW = 1 + len(PRESETS)  # tier 1's answer among the candidates (after the defaults and the presets)
AUTO_TIER2_MIN_BUDGET_MS = 50.0
CHECK_TOLERANCE = 0.0
"""A checked choice stands when its SSIM is at least the defaults' minus this."""


MODEL_TIERS = (Tier.TIER1, Tier.TIER2, Tier.TIER3)


class Why(enum.StrEnum):
    """Why the tier used answered (bounded: a metric label)."""

    ASKED = "asked"  # the tier asked for answered
    AUTO = "auto"  # auto picked the tier from the image class and the time budget
    UNFAMILIAR = "unfamiliar"  # tier 2 kept tier 1's answer: the image is unlike the training icons
    TARGET_QUALITY = "target_quality"  # tier 2 picked the smallest candidate predicted to reach target_quality
    BELOW_DEFAULTS = "below_defaults"  # checked: the tier's SVG scored below the defaults', which answered
    TIER1_AFTER_CHECK = "tier1_after_check"  # checked: the tier's SVG scored below the defaults', tier 1's did not
    POLICY_UNSURE = "policy_unsure"  # tier 3: the policy's pick was not trusted, tier 1's answer stood in
    BELOW_TARGET = "below_target"  # validated: below target_quality, and the defaults scored higher
    MODELS_UNAVAILABLE = "models_unavailable"  # Triton or the vectorize models not ready: the defaults answered
    MODELS_FAILED = "models_failed"  # the ensemble call failed: the defaults answered


FALLBACKS = (Why.BELOW_DEFAULTS, Why.BELOW_TARGET, Why.MODELS_UNAVAILABLE, Why.MODELS_FAILED)
"""Reasons the defaults answered in place of the tier asked for."""


@dataclass(frozen=True)
class Margins:
    """Calibrated thresholds that travel with the models (in ``tier1.json``).

    ``tier2`` is the predicted SSIM gain tier 2 needs to leave tier 1's answer. ``trust`` is, per model tier, the
    predicted SSIM gain over the defaults above which its choice is served unchecked (see :func:`needs_check`).
    """

    tier2: float = 0.005
    trust: dict[Tier, float] = field(default_factory=lambda: {tier: 0.0 for tier in MODEL_TIERS})

    def as_array(self) -> np.ndarray:
        """``[tier2, trust 1, trust 2, trust 3]`` as float32 (the ``margins`` tensor)."""
        return np.asarray([self.tier2, *(self.trust[t] for t in MODEL_TIERS)], dtype=np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> Margins:
        """Inverse of :meth:`as_array`."""
        values = [round(float(v), 6) for v in np.asarray(values).reshape(-1)]  # float32 -> the table's decimals
        return cls(values[0], dict(zip(MODEL_TIERS, values[1:], strict=True)))


@dataclass(frozen=True)
class Tier1Map:
    """Nearest-centroid mapping from standardised features to a parameter vector per centroid."""

    mean: np.ndarray
    std: np.ndarray
    centroids: np.ndarray
    params: np.ndarray
    bank: np.ndarray | None = None
    radius: np.ndarray | None = None  # per cluster: 95th percentile distance of its training images
    margins: Margins = field(default_factory=Margins)

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
            "tier2_margin": self.margins.tier2,
            "trust_margins": {str(t): v for t, v in self.margins.trust.items()},
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
        trust = {Tier(k): float(v) for k, v in data.get("trust_margins", {}).items()}
        margins = Margins(float(data.get("tier2_margin", Margins.tier2)), {**Margins().trust, **trust})
        return cls(**arrays, margins=margins)

    @classmethod
    def load(cls, path: Path) -> Tier1Map:
        """Read a mapping written as JSON."""
        return cls.from_json(json.loads(Path(path).read_text()))


_BANK = sample_vectors(np.random.default_rng(12345), 256)


def candidates(features: np.ndarray, mapping: Tier1Map) -> np.ndarray:
    """Candidate vectors for tier 2: the defaults, the presets, tier 1's answer, then the mapping's bank.

    The bank is the best-found parameters of the training images, or a fixed random sample without one.
    """
    rows = [to_vector(DEFAULTS), *(to_vector(p) for p in PRESETS.values()), mapping(features)[0]]
    bank = _BANK if mapping.bank is None else mapping.bank
    return np.concatenate([np.stack(rows), bank]).astype(np.float32)


@dataclass(frozen=True)
class Scores:
    """What the models say about one image: everything :func:`choose` and :func:`needs_check` read."""

    features: np.ndarray  # (F,)
    candidates: np.ndarray  # (K, P): DEFAULTS_ROW, presets, TIER1_ROW, bank
    ssim: np.ndarray  # (K,) predicted SSIM of each candidate
    log_bytes: np.ndarray  # (K,) predicted ln(SVG bytes)
    policy: np.ndarray  # (P,) tier 3's vector
    policy_ssim: float
    policy_log_bytes: float
    familiar: bool  # within the training radius of its tier 1 cluster
    margins: Margins

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> Scores:
        """From one ``vectorize`` ensemble answer (:data:`serve.vectorize.spec.ENSEMBLE` outputs)."""
        return cls(
            features=outputs["features"].reshape(-1),
            candidates=outputs["candidates"],
            ssim=outputs["ssim"].reshape(-1),
            log_bytes=outputs["log_bytes"].reshape(-1),
            policy=outputs["policy_params"].reshape(-1),
            policy_ssim=float(outputs["policy_ssim"].reshape(-1)[0]),
            policy_log_bytes=float(outputs["policy_log_bytes"].reshape(-1)[0]),
            familiar=bool(outputs["familiar"].reshape(-1)[0] > 0.5),
            margins=Margins.from_array(outputs["margins"]),
        )

    @property
    def image_class(self) -> ImageClass:
        """The coarse class auto dispatches on."""
        return classify(self.features)


@dataclass(frozen=True)
class Choice:
    """A parameter choice: the tier asked for, the tier used, why, and the predictor's view of it."""

    asked: Tier
    used: Tier
    why: Why
    params: VtracerParams
    predicted_ssim: float | None = None
    predicted_bytes: float | None = None
    predicted_gain: float | None = None  # predicted SSIM over the defaults' predicted SSIM
    runner_up: VtracerParams | None = None  # tier 1's answer, tried when this choice loses its check

    @property
    def fallback(self) -> bool:
        """Whether the defaults answered in place of the tier asked for."""
        return self.why in FALLBACKS


def defaults(asked: Tier, why: Why = Why.ASKED) -> Choice:
    """Vtracer's defaults answering a request for ``asked`` (exactly the defaults, never rescaled)."""
    return Choice(asked, Tier.DEFAULT, why, DEFAULTS)


def pick(ssim: np.ndarray, log_bytes: np.ndarray, margin: float, reference: int = DEFAULTS_ROW) -> int:
    """Index of the smallest ``log_bytes`` whose ``ssim`` is at least the reference's and the defaults' + margin.

    Row 0 is the defaults; ``reference`` (tier 1's answer) always qualifies, so tier 2 only leaves it for a
    candidate the predictor rates better by ``margin``. Without a reference (0), the highest predicted SSIM when
    nothing qualifies.
    """
    ok = ssim >= max(ssim[DEFAULTS_ROW], ssim[reference]) + margin
    if reference:
        ok[reference] = True
    if not ok.any():
        return int(np.argmax(ssim))
    return int(np.flatnonzero(ok)[np.argmin(log_bytes[ok])])


def smallest_reaching(ssim: np.ndarray, log_bytes: np.ndarray, target: float) -> int:
    """Index of the smallest predicted candidate predicted to reach ``target`` (else the highest predicted)."""
    ok = ssim >= target
    return int(np.flatnonzero(ok)[np.argmin(log_bytes[ok])]) if ok.any() else int(np.argmax(ssim))


def _row(asked: Tier, used: Tier, why: Why, scores: Scores, row: int) -> Choice:
    return Choice(
        asked,
        used,
        why,
        from_vector(scores.candidates[row]),
        float(scores.ssim[row]),
        float(np.exp(scores.log_bytes[row])),
        float(scores.ssim[row] - scores.ssim[DEFAULTS_ROW]),
    )


def _model_choice(asked: Tier, used: Tier, why: Why, scores: Scores, target_quality: float | None) -> Choice:
    if used is Tier.TIER1:
        return _row(asked, used, why, scores, TIER1_ROW)
    if used is Tier.TIER3:
        gain = scores.policy_ssim - float(scores.ssim[DEFAULTS_ROW])
        if not scores.familiar or gain < scores.margins.trust[Tier.TIER3]:
            return _row(asked, Tier.TIER1, Why.POLICY_UNSURE, scores, TIER1_ROW)
        predicted_bytes = float(np.exp(scores.policy_log_bytes))
        return Choice(asked, used, why, from_vector(scores.policy), scores.policy_ssim, predicted_bytes, gain)
    if target_quality is not None:
        return _row(
            asked, used, Why.TARGET_QUALITY, scores, smallest_reaching(scores.ssim, scores.log_bytes, target_quality)
        )
    if not scores.familiar:
        return _row(asked, used, Why.UNFAMILIAR, scores, TIER1_ROW)
    return _row(asked, used, why, scores, pick(scores.ssim, scores.log_bytes, scores.margins.tier2, TIER1_ROW))


def choose(
    asked: Tier, scores: Scores, side: int, budget_ms: float = 1000.0, target_quality: float | None = None
) -> Choice:
    """The one dispatcher: the parameters of tier ``asked`` for an image whose longest side is ``side``.

    ``auto`` uses tier 2 for gradient and complex images (where the predictor's search pays most) when the budget
    allows, else tier 1. ``target_quality`` makes tier 2 pick the smallest candidate predicted to reach it. Tier 3
    serves the policy's pick only where the predictor trusts it (else tier 1's answer: ``policy_unsure``). A choice
    other than tier 1's answer carries that answer as the runner-up its check tries before the defaults.
    """
    if asked is Tier.DEFAULT:
        return defaults(asked)
    why = Why.ASKED
    used = asked
    if asked is Tier.AUTO:
        why = Why.AUTO
        searchable = scores.image_class in (ImageClass.GRADIENT, ImageClass.COMPLEX)
        used = Tier.TIER2 if searchable and budget_ms >= AUTO_TIER2_MIN_BUDGET_MS else Tier.TIER1
    choice = _model_choice(asked, used, why, scores, target_quality)
    tier1 = scale_to_size(from_vector(scores.candidates[TIER1_ROW]), side)
    params = scale_to_size(choice.params, side)
    return replace(choice, params=params, runner_up=None if tier1 == params else tier1)


def needs_check(choice: Choice, scores: Scores | None, prefer: Preference, target_quality: float | None) -> bool:
    """Whether ``choice`` must be converted beside the defaults and compared (the quality guarantee).

    Not for the defaults themselves, a size-first request or one that names its own ``target_quality``. Otherwise
    checked when the image is unfamiliar, or when the predictor's SSIM gain over the defaults is below the tier's
    calibrated trust margin.
    """
    if choice.used is Tier.DEFAULT or prefer is Preference.SIZE or target_quality is not None or scores is None:
        return False
    if not scores.familiar:
        return True
    return choice.predicted_gain is None or choice.predicted_gain < scores.margins.trust[choice.used]


@dataclass(frozen=True)
class Answer:
    """A choice converted: its SVG, the SSIM measured (when checked), and each stage's time."""

    choice: Choice
    conversion: Conversion
    ssim: float | None
    checked: bool
    timings_ms: dict[str, float]
    unchecked: Conversion | None = None  # the tier's own SVG when the check replaced it
    unchecked_ssim: float | None = None


def score_svg(pixels: np.ndarray, svg: str) -> float:
    """SSIM of ``svg`` rendered back at the size of ``pixels`` (EVAL.md protocol)."""
    return ssim(pixels, render(svg, pixels.shape[1], pixels.shape[0]))


def answer(pixels: np.ndarray, choice: Choice, check: bool) -> Answer:
    """Convert ``pixels`` with ``choice``; when ``check``, keep it only if it scores at least the defaults.

    A choice that loses gives way to its runner-up (tier 1's answer) if that scores at least the defaults, else to
    the defaults. A check costs its own render and SSIM plus the defaults' conversion, render and SSIM; a runner-up
    adds its conversion, render and SSIM.
    """
    start = time.perf_counter()
    conversion = vectorize(pixels, choice.params)
    timings = {"convert": _ms_since(start)}
    if not check:
        return Answer(choice, conversion, None, False, timings)
    mark = time.perf_counter()
    mine = score_svg(pixels, conversion.svg)
    baseline = vectorize(pixels, DEFAULTS)
    theirs = score_svg(pixels, baseline.svg)
    if mine >= theirs - CHECK_TOLERANCE:
        timings["check"] = _ms_since(mark)
        return Answer(choice, conversion, mine, True, timings)
    served, served_conversion, served_ssim = defaults(choice.asked, Why.BELOW_DEFAULTS), baseline, theirs
    if choice.runner_up is not None:
        second = vectorize(pixels, choice.runner_up)
        if (its := score_svg(pixels, second.svg)) >= theirs - CHECK_TOLERANCE:
            served = replace(choice, used=Tier.TIER1, why=Why.TIER1_AFTER_CHECK, params=choice.runner_up)
            served_conversion, served_ssim = second, its
    timings["check"] = _ms_since(mark)
    served = replace(served, predicted_gain=choice.predicted_gain, runner_up=None)
    return Answer(served, served_conversion, served_ssim, True, timings, conversion, mine)


def served_answer(
    pixels: np.ndarray, choice: Choice, check: bool, measure: bool, target_quality: float | None
) -> Answer:
    """What the Vectorizer serves: :func:`answer`, then, when ``measure``, the SSIM of the SVG served.

    Under ``target_quality``, a model tier's SVG that measures below it is replaced by the defaults' when those score
    higher (``why: below_target``).
    """
    result = answer(pixels, choice, check)
    if not measure:
        return result
    mark = time.perf_counter()
    measured = result.ssim if result.ssim is not None else score_svg(pixels, result.conversion.svg)
    result = replace(result, ssim=measured)
    if target_quality is not None and measured < target_quality and result.choice.used != Tier.DEFAULT:
        baseline = vectorize(pixels, DEFAULTS)
        theirs = score_svg(pixels, baseline.svg)
        if theirs > measured:
            result = replace(result, choice=defaults(choice.asked, Why.BELOW_TARGET), conversion=baseline, ssim=theirs)
    return replace(result, timings_ms={**result.timings_ms, "validate": _ms_since(mark)})


def _ms_since(mark: float) -> float:
    return round((time.perf_counter() - mark) * 1000, 2)
