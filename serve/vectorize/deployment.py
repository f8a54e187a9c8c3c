"""Ray Serve ``Vectorizer`` deployment: decode, one Triton ensemble call for every tier, vtracer, optional SSIM.

The tier is chosen by :func:`serve.vectorize.tiers.choose` and checked against vtracer's defaults when
:func:`serve.vectorize.tiers.needs_check` says so (the quality guarantee). With Triton down or the models not built
it answers with vtracer's defaults and says why (``why``, ``fallback``).
vtracer holds the GIL for a whole conversion, so tracing runs in worker processes of each replica, within a deadline
(:mod:`serve.processes.worker`); throughput scales with replicas. Each replica has a worker per size class, so a small
icon (milliseconds of tracing) never waits behind a large upload (up to the deadline); a request waits for its
class's worker at most ``QUEUE_WAIT_S`` (429 past it), and a client that leaves stops its tracing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from ray import serve

from serve import metrics
from serve.errors import EaselError, InvalidInput, NotReady, Overloaded
from serve.images.raster import decode_image
from serve.processes.worker import DeadlineExceeded, DeadlineWorker, WorkerBusy, WorkerDied
from serve.triton.client import TritonClient
from serve.triton.node import grpc_url_on_this_node
from serve.vectorize import tiers
from serve.vectorize.analysis import analysis
from serve.vectorize.convert import LIBRARIES
from serve.vectorize.recording import Recording
from serve.vectorize.schema import Tier, VectorizeOptions
from serve.vectorize.spec import ENSEMBLE
from serve.vectorize.tiers import Why
from serve.vectorize.versions import TableReader, ensemble_name

logger = logging.getLogger(__name__)


@dataclass
class VectorizeResult:
    """What the API returns (as SVG, or as JSON with everything)."""

    svg: str
    tier: str
    requested_tier: str
    why: str
    image_class: str | None
    parameters: dict
    predicted_quality: float | None
    ssim: float | None
    checked: bool
    bytes: int
    paths: int
    fallback: str | None
    model_version: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    id: str | None = None  # set when an experiment chose the version: what feedback names
    experiment: str | None = None

    def to_json(self) -> dict:
        """The JSON response body."""
        return asdict(self)


TRACE_DEADLINE_S = 20.0
"""Seconds one request's tracing (conversions, renders, SSIM) may take; an image that needs more is refused (400)."""
QUEUE_WAIT_S = 10.0
"""Seconds a request waits for its size class's worker, busy with others, before a 429 with ``Retry-After``."""
SMALL_PIXELS = 512 * 512
"""Images up to this many pixels (icons) trace in a replica's small-image worker, larger ones in its large-image one."""


def size_class(pixels: np.ndarray) -> str:
    """Which of a replica's workers traces an image (``small`` or ``large``)."""
    return "small" if pixels.shape[0] * pixels.shape[1] <= SMALL_PIXELS else "large"


@serve.deployment(name="Vectorizer")
class Vectorizer:
    """Vectorize uploads; many in flight per replica, tracing in its worker processes (one per size class)."""

    def __init__(self, triton_grpc_url: str, table_path: str | None = None, recording: Recording | None = None) -> None:
        self.triton = TritonClient(grpc_url_on_this_node(triton_grpc_url), timeout_s=30)
        self.versions = TableReader(table_path)
        self.recording = recording or Recording()
        self.workers = {
            size: DeadlineWorker(f"vectorize-{size}", preload=("serve.vectorize.tiers", *LIBRARIES)).start()
            for size in ("small", "large")
        }

    async def vectorize(
        self, upload: bytes, options: VectorizeOptions, sent_at: float | None = None
    ) -> VectorizeResult:
        """Decode and validate ``upload``, choose parameters, convert, and optionally score the SVG.

        ``sent_at`` is when the Gateway sent the request (epoch seconds), for the queue-time metric.
        """
        metrics.observe_queue_time(metrics.VECTORIZE, sent_at)
        sampled = self.recording.sampled()
        if sampled:  # a recorded answer's SSIM is measured
            options = options.model_copy(update={"validate_output": True})
        with metrics.timed(metrics.PIPELINE_LATENCY, pipeline=metrics.VECTORIZE, outcome="ok"):
            result, pixels, scores = await self._vectorize(upload, options)
        _record(result)
        if sampled:
            await asyncio.to_thread(self.recording.keep, result, pixels, scores)
        return result

    async def _vectorize(
        self, upload: bytes, options: VectorizeOptions
    ) -> tuple[VectorizeResult, np.ndarray, tiers.Scores | None]:
        started = time.perf_counter()
        pixels = await _decode(upload)
        timings = {"decode": _ms_since(started)}
        version = self.versions.now().resolve(options.model_version)
        choice, scores, detail = await self._choose(pixels, options, version, timings)
        check = tiers.needs_check(choice, scores, options.prefer, options.target_quality)
        result = await self._trace(pixels, choice, check, options)
        timings.update(result.timings_ms)
        choice, conversion, measured = result.choice, result.conversion, result.ssim
        timings["total"] = _ms_since(started)
        answer = VectorizeResult(
            svg=conversion.svg,
            tier=choice.used.value,
            requested_tier=choice.asked.value,
            why=choice.why.value,
            image_class=scores.image_class.value if scores is not None else None,
            parameters=choice.params.kwargs(),
            predicted_quality=choice.predicted_ssim,
            ssim=measured,
            checked=result.checked,
            bytes=conversion.n_bytes,
            paths=conversion.n_paths,
            fallback=_fallback_message(choice.why, detail) if choice.fallback else None,
            model_version=version,
            timings_ms=timings,
        )
        return answer, pixels, scores

    async def _trace(
        self, pixels: np.ndarray, choice: tiers.Choice, check: bool, options: VectorizeOptions
    ) -> tiers.Answer:
        """:func:`tiers.served_answer` in the worker of the image's size class, within :data:`TRACE_DEADLINE_S`."""
        size = size_class(pixels)
        try:
            return await self.workers[size].call(
                TRACE_DEADLINE_S,
                "serve.vectorize.tiers:served_answer",
                pixels,
                choice,
                check,
                options.validate_output,
                options.target_quality,
                wait_s=QUEUE_WAIT_S,
            )
        except WorkerBusy as error:
            raise Overloaded(
                f"vectorize: busy with other {size} images for more than {QUEUE_WAIT_S:g} s; retry shortly",
                retry_after_s=int(QUEUE_WAIT_S),
            ) from error
        except DeadlineExceeded as error:
            raise InvalidInput(
                f"image: tracing it took more than {TRACE_DEADLINE_S:g} s, the limit per request; it is too detailed "
                "to vectorize (noise and photographs are): send a logo, an icon or flat art, or a smaller image",
                field="image",
            ) from error
        except WorkerDied as error:
            raise NotReady("the vectorize worker died; retry shortly", retry_after_s=1) from error

    async def _choose(
        self, pixels: np.ndarray, options: VectorizeOptions, version: int, timings: dict
    ) -> tuple[tiers.Choice, tiers.Scores | None, str]:
        """The parameter choice, the models' scores (None when they did not answer) and a detail for fallbacks."""
        asked = Tier(options.tier)
        if asked is Tier.DEFAULT:
            return tiers.defaults(asked), None, ""
        mark = time.perf_counter()
        try:
            scores = await self._scores(pixels, version)
        except EaselError as error:
            logger.warning("vectorize models unavailable, using defaults: %s", error.message)
            return tiers.defaults(asked, Why.MODELS_UNAVAILABLE), None, error.message
        except Exception as error:  # noqa: BLE001 - any Triton failure degrades to the defaults, never a 500
            logger.warning("vectorize ensemble failed, using defaults: %s", error)
            return tiers.defaults(asked, Why.MODELS_FAILED), None, str(error)
        timings["models"] = _ms_since(mark)
        choice = tiers.choose(asked, scores, max(pixels.shape[:2]), options.time_budget_ms, options.target_quality)
        return choice, scores, ""

    async def _scores(self, pixels: np.ndarray, version: int) -> tiers.Scores:
        """The scores of one image by vectorize version ``version`` (one ensemble call answers every tier)."""
        ensemble = replace(ENSEMBLE, name=ensemble_name(version))
        return tiers.Scores.from_outputs(await self.triton.infer(ensemble, {"image": pixels}))

    async def analyze(self, upload: bytes, options: VectorizeOptions) -> dict:
        """The image's features, class and each tier's predicted result, without converting (503 without models)."""
        pixels = await _decode(upload)
        version = self.versions.now().resolve(options.model_version)
        try:
            scores = await self._scores(pixels, version)
        except EaselError:
            raise
        except Exception as error:  # noqa: BLE001 - a Triton failure is the models not answering, never a 500
            raise NotReady(f"the vectorize models did not answer: {error}", retry_after_s=1) from error
        return analysis(scores, max(pixels.shape[:2]), options) | {"model_version": version}

    async def ready(self) -> dict[str, bool]:
        """Readiness of the vectorize ensemble (vectorize still answers, with defaults, when it is not)."""
        return await self.triton.models_ready((ensemble_name(self.versions.now().current),))


_FALLBACK_MESSAGES = {
    Why.MODELS_UNAVAILABLE: "models unavailable",
    Why.MODELS_FAILED: "models failed",
    Why.BELOW_DEFAULTS: "the tier's SVG scored below vtracer's defaults",
    Why.BELOW_TARGET: "below target_quality; vtracer defaults scored higher",
}


async def _decode(upload: bytes) -> np.ndarray:
    """The upload's RGB pixels (:class:`~serve.images.raster.ImageRejected`: 400 naming ``image``, 413 past a limit)."""
    return await asyncio.to_thread(decode_image, upload, "image")


def _fallback_message(why: Why, detail: str) -> str:
    """The ``fallback`` text: why the defaults answered (with the error for a models fallback)."""
    return f"{_FALLBACK_MESSAGES[why]}: {detail}" if detail else _FALLBACK_MESSAGES[why]


def _record(result: VectorizeResult) -> None:
    """Metrics of one answered request: the tier asked for and used and why, the fallback taken, each stage's time."""
    metrics.count(metrics.VECTORIZE_TIERS, requested_tier=result.requested_tier, tier=result.tier, why=result.why)
    if result.fallback:
        metrics.count(metrics.VECTORIZE_FALLBACKS, reason=result.why)
    for stage, ms in result.timings_ms.items():
        if stage != "total":
            metrics.observe(metrics.VECTORIZE_STAGE, ms / 1000, stage=stage)


def _ms_since(mark: float) -> float:
    return round((time.perf_counter() - mark) * 1000, 2)
