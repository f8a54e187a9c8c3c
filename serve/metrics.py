"""Easel's own metrics, declared once (name, kind, description, tag keys, buckets) and recorded through Ray Serve.

Ray exports each metric with a ``ray_`` prefix on every node's metrics-export port, next to Ray Serve's built-in
``ray_serve_*`` metrics; Serve adds the ``deployment``, ``replica`` and ``application`` tags. So the histogram
``easel_pipeline_latency_seconds`` is scraped as ``ray_easel_pipeline_latency_seconds_{bucket,sum,count}`` and the
counter ``easel_http_requests`` as ``ray_easel_http_requests_total``. Dashboards and tests take names from here.

UNet batch sizes are not recorded here: Triton's own ``nv_inference_count`` (samples) over ``nv_inference_exec_count``
(executions) per model is the batch size Triton's dynamic batcher actually formed, which no client can see.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal

from serve import gauge_refresh

RAY_PREFIX = "ray_"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

TEXT_TO_IMAGE = "text_to_image"
VECTORIZE = "vectorize"
UPSCALE = "upscale"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: what it is called, what it measures, its tags and (for histograms) its bucket bounds."""

    name: str
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    exporter: Literal["ray", "triton"] = "ray"  # triton: a python-backend model's, on Triton's metrics port

    @property
    def exported(self) -> str:
        """The name Prometheus sees (before ``_total`` / ``_bucket`` / ``_sum`` / ``_count`` suffixes)."""
        return (RAY_PREFIX if self.exporter == "ray" else "") + self.name

    @property
    def series(self) -> tuple[str, ...]:
        """Every series name Prometheus scrapes for this metric."""
        if self.kind == "counter":
            return (f"{self.exported}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.exported}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.exported,)


HTTP_REQUESTS = MetricSpec(
    "easel_http_requests",
    "counter",
    "HTTP requests answered by the Gateway, by endpoint, method and status code (errors: status >= 400).",
    ("endpoint", "method", "status"),
)
HTTP_LATENCY = MetricSpec(
    "easel_http_request_latency_seconds",
    "histogram",
    "Gateway latency from request received to response sent, by endpoint and pipeline.",
    ("endpoint", "pipeline"),
    LATENCY_BUCKETS_S,
)
PIPELINE_LATENCY = MetricSpec(
    "easel_pipeline_latency_seconds",
    "histogram",
    "Time a pipeline deployment spends on one request (text_to_image: encode, denoise, decode, encode images).",
    ("pipeline", "outcome"),
    LATENCY_BUCKETS_S,
)
QUEUE_TIME = MetricSpec(
    "easel_queue_time_seconds",
    "histogram",
    "Time from the Gateway sending a request to a pipeline replica starting it (Ray Serve routing and queueing).",
    ("pipeline",),
    STAGE_BUCKETS_S,
)
DENOISING_STEPS = MetricSpec(
    "easel_denoising_steps",
    "counter",
    "Denoising steps completed (one Triton UNet call each); rate() is steps/s.",
    ("scheduler",),
)
IMAGES_GENERATED = MetricSpec("easel_images_generated", "counter", "Images generated.", ("output_format",))
APPROXIMATE_CACHE = MetricSpec(
    "easel_approximate_cache_requests",
    "counter",
    "Generations that looked for a similar earlier prompt's kept latents, by result: hit (started from them) or miss.",
    ("result",),
)
STEPS_SKIPPED = MetricSpec(
    "easel_steps_skipped",
    "counter",
    "Denoising steps not run: generations started from a similar earlier prompt's kept latents this many steps in.",
)
VECTORIZE_TIERS = MetricSpec(
    "easel_vectorize_requests",
    "counter",
    "Vectorize requests by the tier asked for, the tier that chose the parameters (default: vtracer's) and why.",
    ("requested_tier", "tier", "why"),
)
VECTORIZE_FALLBACKS = MetricSpec(
    "easel_vectorize_fallbacks",
    "counter",
    "Vectorize requests answered with vtracer's defaults instead of the asked tier, by reason (the answer's why).",
    ("reason",),
)
VECTORIZE_PREDICTOR_ERROR = MetricSpec(
    "easel_vectorize_predictor_error",
    "histogram",
    "The quality predictor's absolute error on recorded vectorize answers: |measured SSIM - predicted|, by tier and "
    "model version (_sum / _count: the mean absolute error).",
    ("tier", "model_version"),
    (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
VECTORIZE_STAGE = MetricSpec(
    "easel_vectorize_stage_seconds",
    "histogram",
    "Time of each vectorize stage: decode, models (Triton ensemble), convert (vtracer), check (against the defaults), "
    "validate (render + SSIM).",
    ("stage",),
    STAGE_BUCKETS_S,
)

JOBS = MetricSpec(
    "easel_jobs",
    "gauge",
    "Background jobs in the store by state and priority (queued: the queue's depth); each Gateway replica reports it.",
    ("state", "priority"),
)
JOB_QUEUE_TIME = MetricSpec(
    "easel_job_queue_seconds",
    "histogram",
    "Time a background job waited in the queue before a runner first claimed it, by priority.",
    ("priority",),
    LATENCY_BUCKETS_S,
)
JOB_CANCELS = MetricSpec(
    "easel_job_cancels", "counter", "Cancels asked for, by the job's state when asked (queued, running).", ("state",)
)
JOB_RETRIES = MetricSpec(
    "easel_job_retries",
    "counter",
    "Background job runs retried because they failed through no fault of the job, by reason (the HTTP status of "
    "the error, or the exception's type: a replica that died, Ray failing).",
    ("reason",),
)
CACHE_REQUESTS = MetricSpec(
    "easel_cache_requests",
    "counter",
    "Generations that could be answered from the result cache (an explicit seed), by result: hit or miss.",
    ("result",),
)
KEY_REQUESTS = MetricSpec(
    "easel_key_requests",
    "counter",
    "Requests checked against an API key, by key id (never the key) and result: admitted, or the limit that refused "
    "it (requests, cost, requests_per_day, concurrent).",
    ("key_id", "result"),
)
KEY_COST = MetricSpec(
    "easel_key_cost",
    "counter",
    "Generation cost admitted (images x megapixels x engine passes, + input megapixels), by key id.",
    ("key_id",),
)
IMAGE_EVICTIONS = MetricSpec(
    "easel_image_store_evictions",
    "counter",
    "Kept images dropped by retention, by reason (key_quota: its key over its own quota, its oldest; age: past "
    "--image-retention-s; global: the store over --image-store-bytes, the last resort) and whose (own: the key whose "
    "image was being kept; other: another key's).",
    ("reason", "whose"),
)
MODERATION_FLAGS = MetricSpec(
    "easel_moderation_flags",
    "counter",
    "Items moderation flagged, by what (prompt, input_image, image: a generated one, or input: a POST /v1/moderations "
    "item), category and key id (none: no key).",
    ("item", "category", "key_id"),
)
ADAPTER_REQUESTS = MetricSpec(
    "easel_adapter_requests",
    "counter",
    "Generations using an adapter, by adapter (a LoRA's or ControlNet's name, or ip_adapter) and kind (lora, "
    "ip_adapter, controlnet).",
    ("adapter", "kind"),
)
GENERATION_KINDS = MetricSpec(
    "easel_generation_requests",
    "counter",
    "Generations by kind (text, img2img, inpaint, outpaint), whether ControlNets guide them (controlnet: yes, no) "
    "and the loop that drew them (loop: triton, the model's loop inside Triton; replica, the replica's).",
    ("kind", "controlnet", "loop"),
)
REWARD_BUCKETS = (0.125, 0.375, 0.625, 0.875, 1.0)
"""A reward's buckets: each 1-5 rating in one of its own (rating r is the reward (r - 1) / 4)."""
VARIANT_REQUESTS = MetricSpec(
    "easel_variant_requests",
    "counter",
    "Generations and vectorize answers by the model that served them (variant) and the experiment (alias) that chose "
    "it (none: the request named the model), by outcome (ok; error; fallback: a vectorize answer given with vtracer's "
    "defaults instead of the variant's pick).",
    ("experiment", "variant", "outcome"),
)
VARIANT_LATENCY = MetricSpec(
    "easel_variant_latency_seconds",
    "histogram",
    "Time to answer a generation (synchronous ones: the Gateway's; jobs: their run), by experiment and variant.",
    ("experiment", "variant"),
    LATENCY_BUCKETS_S,
)
VARIANT_REWARD = MetricSpec(
    "easel_variant_reward",
    "histogram",
    "Rewards given by POST /v1/feedback (0 to 1; a 1-5 rating r as (r - 1) / 4), by experiment and variant: "
    "_sum / _count is the mean reward.",
    ("experiment", "variant"),
    REWARD_BUCKETS,
)
SSIM_BUCKETS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
SVG_BYTES_BUCKETS = tuple(float(2**k) for k in range(10, 23))
"""1 KiB to 4 MiB, doubling."""
VARIANT_SSIM = MetricSpec(
    "easel_variant_ssim",
    "histogram",
    "Measured SSIM (the SVG rendered back against the input: validate, or a recorded answer) of vectorize answers "
    "through an experiment, by experiment and variant (vectorize.vN): _sum / _count is the mean.",
    ("experiment", "variant"),
    SSIM_BUCKETS,
)
VARIANT_CLIP_SCORE = MetricSpec(
    "easel_variant_clip_score",
    "histogram",
    "CLIP score (the prompt-image cosine, easel up --scorer clip=DIR) of generated images that asked scores, by "
    "experiment and variant (the model): _sum / _count is the mean, histogram_quantile(0.1, ...) the p10 (a score "
    "at or below 0.025, a negative one too, counts in the first bucket: Ray's bounds are positive).",
    ("experiment", "variant"),
    tuple(round(0.025 * i, 3) for i in range(1, 33)),
)
VARIANT_AESTHETIC = MetricSpec(
    "easel_variant_aesthetic",
    "histogram",
    "Aesthetic score (LAION's predictor over CLIP, easel up --scorer aesthetic=FILE) of generated images that asked "
    "scores, by experiment and variant (the model): _sum / _count is the mean, the 0.1 quantile the p10 (at or "
    "below 0.25 in the first bucket).",
    ("experiment", "variant"),
    tuple(0.25 * i for i in range(1, 41)),
)
VARIANT_IDENTITY = MetricSpec(
    "easel_variant_identity",
    "histogram",
    "Identity score (the cosine of a generated image's best face with its character's, easel up --faces DIR) of "
    "generated images that named a character and asked scores, by experiment and variant (the model): _sum / _count "
    "is the mean, the 0.1 quantile the p10 (at or below 0.025, a negative one too, in the first bucket).",
    ("experiment", "variant"),
    tuple(round(0.025 * i, 3) for i in range(1, 41)),
)
SCORE_METRICS = {"clip_score": VARIANT_CLIP_SCORE, "aesthetic": VARIANT_AESTHETIC, "identity": VARIANT_IDENTITY}
"""Each image score's metric."""
VARIANT_SVG_BYTES = MetricSpec(
    "easel_variant_svg_bytes",
    "histogram",
    "SVG bytes of vectorize answers through an experiment, by experiment and variant (vectorize.vN).",
    ("experiment", "variant"),
    SVG_BYTES_BUCKETS,
)
EXPERIMENT_FEEDBACK = MetricSpec(
    "easel_experiment_feedback",
    "counter",
    "Feedback taken, by experiment (none: a model named directly, or a cached answer), the API key that gave it "
    "(key_id; none: an open API) and whether it counted as evidence (counted: yes; no: past the key's share of the "
    "experiment, or no experiment's).",
    ("experiment", "key_id", "counted"),
)
# Recorded by the LoRA-ready engines' python-backend models (serve/adapters/backend.py), exported by Triton.
ADAPTER_LOADS = MetricSpec(
    "easel_adapter_loads",
    "counter",
    "LoRA adapters loaded into an engine instance.",
    ("model", "adapter"),
    (),
    "triton",
)
ADAPTER_LOAD_SECONDS = MetricSpec(
    "easel_adapter_load_seconds", "counter", "Seconds spent loading LoRA adapters.", ("model", "instance"), (), "triton"
)
ADAPTER_EVICTIONS = MetricSpec(
    "easel_adapter_evictions", "counter", "LoRA adapters evicted (least recently used).", ("model",), (), "triton"
)
ADAPTER_RESIDENT = MetricSpec(
    "easel_adapter_resident", "gauge", "LoRA adapters an engine instance holds.", ("model", "instance"), (), "triton"
)
ADAPTER_RESIDENT_BYTES = MetricSpec(
    "easel_adapter_resident_bytes", "gauge", "Bytes of LoRA adapters held.", ("model", "instance"), (), "triton"
)
MODEL_LOAD_SECONDS = MetricSpec(
    "easel_model_load_seconds",
    "histogram",
    "Seconds each generation waited for its model to load into Triton (0: it was loaded).",
    ("model",),
    (0.001, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
MODEL_LOADED = MetricSpec(
    "easel_model_loaded", "gauge", "Whether a served model's engines are loaded in Triton (1) or not (0).", ("model",)
)
MODEL_CIRCUIT_STATE = MetricSpec(
    "easel_model_circuit_state", "gauge", "A model's circuit breaker: 0 closed, 1 half-open, 2 open.", ("model",)
)
MODEL_MEMORY_BYTES = MetricSpec(
    "easel_model_memory_bytes",
    "gauge",
    "The served models' weights in memory, by part: loaded (the loaded models' together) and budget (the room "
    "--memory-budget leaves them; 0: no budget, every model stays loaded).",
    ("part",),
)
AUDIT_EVENTS = MetricSpec(
    "easel_audit_events", "counter", "Audit log entries, by action and outcome.", ("action", "outcome")
)
IMAGE_STORE_BYTES = MetricSpec(
    "easel_image_store_bytes",
    "gauge",
    "The image store's bytes, by part: kept (every kept image's) and bound (--image-store-bytes), as a Gateway replica "
    "that keeps images last summed them (at most every 10 s).",
    ("part",),
)

ALL = tuple(spec for spec in tuple(globals().values()) if isinstance(spec, MetricSpec))
"""Every metric, in the order declared above (a new one is declared once, above this line)."""

_made: dict[str, object] = {}
_lock = threading.Lock()


def _metric(spec: MetricSpec):
    """The Ray metric for ``spec``, made on first use in this process (inside a replica it gets Serve's tags)."""
    with _lock:
        metric = _made.get(spec.name)
        if metric is None:
            from ray.serve import metrics

            kinds = {"counter": metrics.Counter, "histogram": metrics.Histogram, "gauge": metrics.Gauge}
            kwargs = {"boundaries": list(spec.boundaries)} if spec.kind == "histogram" else {}
            metric = kinds[spec.kind](spec.name, spec.description, tag_keys=spec.tag_keys, **kwargs)
            _made[spec.name] = metric
        return metric


def _tags(spec: MetricSpec, tags: dict[str, object]) -> dict[str, str]:
    if set(tags) != set(spec.tag_keys):
        raise ValueError(f"{spec.name} takes tags {spec.tag_keys}, got {tuple(tags)}")
    return {key: str(value) for key, value in tags.items()}


def count(spec: MetricSpec, value: float = 1.0, **tags: object) -> None:
    """Add ``value`` to counter ``spec``."""
    _metric(spec).inc(value, tags=_tags(spec, tags))


def observe(spec: MetricSpec, value: float, **tags: object) -> None:
    """Record ``value`` in histogram ``spec``."""
    _metric(spec).observe(value, tags=_tags(spec, tags))


def set_gauge(spec: MetricSpec, value: float, **tags: object) -> None:
    """Set gauge ``spec`` to ``value``; it stays exported until set again (:mod:`serve.gauge_refresh`)."""
    metric, named = _metric(spec), _tags(spec, tags)
    metric.set(value, tags=named)
    gauge_refresh.hold((spec.name, *sorted(named.items())), partial(metric.set, value, tags=named))


@contextmanager
def timed(spec: MetricSpec, **tags: object) -> Iterator[None]:
    """Observe the block's duration in seconds in histogram ``spec``; an exception sets ``outcome`` to ``error``."""
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        if "outcome" in tags:
            tags["outcome"] = "error"
        raise
    finally:
        observe(spec, time.perf_counter() - started, **tags)


def observe_queue_time(pipeline: str, sent_at: float | None) -> None:
    """Record the time since the Gateway sent the request (wall clock; on one node Gateway and replica share it)."""
    if sent_at is not None:
        observe(QUEUE_TIME, max(0.0, time.time() - sent_at), pipeline=pipeline)
