"""Ray Serve ``Vectorizer`` deployment: decode, one Triton ensemble call for every tier, vtracer, optional SSIM.

With Triton down or the models not built it answers with vtracer's defaults and says why (``fallback``).
vtracer holds the GIL, so throughput scales with replicas (processes), not threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from ray import serve

from serve import metrics
from serve.errors import EaselError, InvalidInput, PayloadTooLarge
from serve.triton.client import TritonClient
from serve.vectorize import tiers
from serve.vectorize.convert import render, ssim, vectorize
from serve.vectorize.features import classify
from serve.vectorize.image import ImageRejected, decode_image
from serve.vectorize.params import DEFAULTS, from_vector
from serve.vectorize.runtime import load_tier1
from serve.vectorize.schema import VectorizeOptions
from serve.vectorize.spec import ENSEMBLE

logger = logging.getLogger(__name__)


@dataclass
class VectorizeResult:
    """What the API returns (as SVG, or as JSON with everything)."""

    svg: str
    tier: str
    requested_tier: str
    image_class: str | None
    parameters: dict
    predicted_quality: float | None
    ssim: float | None
    bytes: int
    paths: int
    fallback: str | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The JSON response body."""
        return asdict(self)


class _Precomputed:
    """The quality predictor's answers for the candidates Triton scored, in the shape tier 2 asks for."""

    def __init__(self, candidates: np.ndarray, ssim_: np.ndarray, log_bytes: np.ndarray) -> None:
        self.candidates, self.ssim, self.log_bytes = candidates, ssim_.reshape(-1), log_bytes.reshape(-1)

    def __call__(self, features: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not np.array_equal(params, self.candidates):
            raise RuntimeError("tier 2 asked about other candidates than the ones Triton scored")
        return self.ssim, self.log_bytes


def select(
    requested: str,
    outputs: dict[str, np.ndarray],
    mapping: tiers.Tier1Map | None,
    margin: float,
    budget_ms: float,
    target_quality: float | None,
) -> tiers.Choice:
    """The parameter choice of tier ``requested`` from one ``vectorize`` ensemble answer."""
    features = outputs["features"][0]
    predictor = _Precomputed(outputs["candidates"], outputs["ssim"], outputs["log_bytes"])
    policy = lambda _: outputs["policy_params"]  # noqa: E731 - the policy already ran inside the ensemble
    if requested == "2" and target_quality is not None:
        ok = predictor.ssim >= target_quality
        best = int(np.flatnonzero(ok)[np.argmin(predictor.log_bytes[ok])]) if ok.any() else int(predictor.ssim.argmax())
        return tiers.Choice(
            from_vector(predictor.candidates[best]),
            "tier2",
            float(predictor.ssim[best]),
            float(np.exp(predictor.log_bytes[best])),
        )
    if requested == "1":
        if mapping is None:
            raise LookupError("the tier-1 mapping is not trained")
        return tiers.tier1(features, mapping)
    if requested == "2":
        return tiers.tier2(features, predictor, mapping, margin)
    if requested == "3":
        return tiers.tier3(features, policy)
    return tiers.auto(features, mapping, predictor, policy, budget_ms, margin)


@serve.deployment(name="Vectorizer")
class Vectorizer:
    """Vectorize uploads; many in flight per replica, CPU work in worker threads."""

    def __init__(self, triton_grpc_url: str) -> None:
        self.mapping, self.margin = load_tier1()
        self.triton = TritonClient(triton_grpc_url, timeout_s=30)

    async def vectorize(
        self, upload: bytes, options: VectorizeOptions, sent_at: float | None = None
    ) -> VectorizeResult:
        """Decode and validate ``upload``, choose parameters, convert, and optionally score the SVG.

        ``sent_at`` is when the Gateway sent the request (epoch seconds), for the queue-time metric.
        """
        metrics.observe_queue_time(metrics.VECTORIZE, sent_at)
        with metrics.timed(metrics.PIPELINE_LATENCY, pipeline=metrics.VECTORIZE, outcome="ok"):
            result = await self._vectorize(upload, options)
        _record(result)
        return result

    async def _vectorize(self, upload: bytes, options: VectorizeOptions) -> VectorizeResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        try:
            pixels = await asyncio.to_thread(decode_image, upload, "image")
        except ImageRejected as error:
            raise (PayloadTooLarge if error.status == 413 else InvalidInput)(str(error), field=error.field) from error
        timings["decode"] = _ms_since(started)
        choice, image_class, fallback, features = await self._choose(pixels, options, timings)
        mark = time.perf_counter()
        verified = None
        if features is not None:  # tier 2 converts its pick and tier 1's answer, keeping the better SSIM
            verified = await asyncio.to_thread(tiers.verify_tier2, pixels, choice, features, self.mapping)
        if verified is not None:
            choice, conversion, measured = verified.choice, verified.conversion, verified.ssim
        else:
            conversion, measured = await asyncio.to_thread(vectorize, pixels, choice.params), None
        timings["convert"] = _ms_since(mark)
        if options.validate_output:
            mark = time.perf_counter()
            if measured is None:
                measured = await asyncio.to_thread(_score, pixels, conversion.svg)
            if options.target_quality is not None and measured < options.target_quality and choice.tier != "default":
                default = await asyncio.to_thread(vectorize, pixels, DEFAULTS)
                default_ssim = await asyncio.to_thread(_score, pixels, default.svg)
                if default_ssim > measured:
                    choice, conversion, measured = tiers.Choice(DEFAULTS, "default"), default, default_ssim
                    fallback = "below target_quality; vtracer defaults scored higher"
            timings["validate"] = _ms_since(mark)
        timings["total"] = _ms_since(started)
        return VectorizeResult(
            svg=conversion.svg,
            tier=_public_tier(choice.tier),
            requested_tier=options.tier,
            image_class=image_class,
            parameters=choice.params.kwargs(),
            predicted_quality=choice.predicted_ssim,
            ssim=measured,
            bytes=conversion.n_bytes,
            paths=conversion.n_paths,
            fallback=fallback,
            timings_ms=timings,
        )

    async def _choose(self, pixels: np.ndarray, options: VectorizeOptions, timings: dict) -> tuple:
        """The parameter choice, the image class, the fallback reason if the defaults stood in, and the features."""
        if options.tier == "default":
            return tiers.Choice(DEFAULTS, "default"), None, None, None
        mark = time.perf_counter()
        try:
            outputs = await self.triton.infer(ENSEMBLE, {"image": pixels})
        except EaselError as error:
            logger.warning("vectorize models unavailable, using defaults: %s", error.message)
            return tiers.Choice(DEFAULTS, "default"), None, f"models unavailable: {error.message}", None
        except Exception as error:  # noqa: BLE001 - any Triton failure degrades to the defaults, never a 500
            logger.warning("vectorize ensemble failed, using defaults: %s", error)
            return tiers.Choice(DEFAULTS, "default"), None, f"models failed: {error}", None
        timings["models"] = _ms_since(mark)
        features = outputs["features"][0]
        image_class = classify(features).value
        try:
            choice = select(
                options.tier, outputs, self.mapping, self.margin, options.time_budget_ms, options.target_quality
            )
        except LookupError as error:
            return tiers.Choice(DEFAULTS, "default"), image_class, f"models unavailable: {error}", None
        return tiers.sized(choice, max(pixels.shape[:2])), image_class, None, features

    async def ready(self) -> dict[str, bool]:
        """Readiness of the vectorize ensemble (vectorize still answers, with defaults, when it is not)."""
        return await self.triton.models_ready((ENSEMBLE.name,))


def _record(result: VectorizeResult) -> None:
    """Metrics of one answered request: the tier asked for and used, the fallback taken, each stage's time."""
    metrics.count(metrics.VECTORIZE_TIERS, requested_tier=result.requested_tier, tier=result.tier)
    if result.fallback:
        metrics.count(metrics.VECTORIZE_FALLBACKS, reason=metrics.fallback_reason(result.fallback))
    for stage, ms in result.timings_ms.items():
        if stage != "total":
            metrics.observe(metrics.VECTORIZE_STAGE, ms / 1000, stage=stage)


def _score(pixels: np.ndarray, svg: str) -> float:
    return ssim(pixels, render(svg, pixels.shape[1], pixels.shape[0]))


def _public_tier(tier: str) -> str:
    """'tier2' -> '2', 'auto:tier3' -> '3', 'tier2:unfamiliar->tier1' -> '2', 'default'/'defaults' -> 'default'."""
    name = tier.removeprefix("auto:").split(":")[0]
    return name.removeprefix("tier") if name.startswith("tier") else "default"


def _ms_since(mark: float) -> float:
    return round((time.perf_counter() - mark) * 1000, 2)
