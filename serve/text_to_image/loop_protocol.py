"""What the replica and the loop inside Triton say to each other: the loop model, its requests, its answers' events.

The loop model (``text_to_image_loop``, :mod:`serve.text_to_image.triton_loop`) is a decoupled python-backend model:
each request is one generation, or the cancel of one. A generation's request is its JSON (its sampling, priority and
step caching; an id; whether its steps may merge with other requests' and whether to report each step), as
``uint8``; its answer is a stream: a response per step when asked (an :data:`EVENT_OUTPUT` ``{"step", "total"}``,
and at the steps a preview reads, its latents), then a final response with its images and ``{"seed", "dropped"}``,
or ``{"error": ...}`` (an Easel error the caller raises again), or ``{"cancelled": true}``.

A cancel is a request of its own (``{"cancel": ID}``): Easel never cancels a gRPC call it sent (Triton 2.51's
cancellation races its responses: :mod:`serve.triton.client`), so a caller that gives up asks the loop to stop that
generation at its next step, and the generation's stream ends on its own.

Tensors cross the stub by DLPack, never ``as_numpy`` (Triton 2.51's stub predates NumPy 2, whose arrays it misreads):
the request and events are ``uint8``, the images and latents flat (shaped again by the caller). This module imports
no engine: the Gateway reads :func:`loop_spec` through the served models.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.priority import Priority
from serve.text_to_image.generation import CachePolicy, Generation, SamplingParams
from serve.triton.spec import ModelSpec, TensorSpec

LOOP_MODEL = "text_to_image_loop"
GENERATION_INPUT = "generation"
IMAGES_OUTPUT = "images"
EVENT_OUTPUT = "event"
LATENTS_OUTPUT = "latents"
LOOP_CLASS = "serve.text_to_image.triton_loop:TextToImageLoop"
LOOPS = ("auto", "triton", "replica")
"""Where a model's text-to-image requests are drawn (``easel up --loop``): ``triton``, by its loop model inside
Triton (:data:`LOOP_CLASS`); ``replica``, by the replica's loop, one Triton call per engine per
step; ``auto``, inside Triton for a model whose engines run on the torch runtime (what a GPU builds)."""


def loop_spec(engine_dir: Path, prefix: str = "", buckets: tuple[int, ...] = (), resident: bool = True) -> ModelSpec:
    """The loop model of the engine folder ``engine_dir`` (Triton name ``prefix`` + :data:`LOOP_MODEL`).

    ``buckets``: the denoisers' buckets it captures instead of their ``torch.json``'s; ``resident`` off: its tensors
    cross the host every step, as the replica's do (both to measure).
    """
    parameters = {"engine_dir": str(engine_dir)} | ({"buckets": ",".join(map(str, buckets))} if buckets else {})
    parameters |= {} if resident else {"resident": "0"}
    return ModelSpec(
        name=f"{prefix}{LOOP_MODEL}",
        inputs=(TensorSpec(GENERATION_INPUT, "uint8", (-1,), ("bytes",)),),
        outputs=(
            TensorSpec(IMAGES_OUTPUT, "uint8", (-1,), ("pixels",)),  # n x height x width x 3, flat
            TensorSpec(EVENT_OUTPUT, "uint8", (-1,), ("bytes",)),  # JSON
            TensorSpec(LATENTS_OUTPUT, "float32", (-1,), ("values",)),  # a step's latents, flat, for its preview
        ),
        parameters=parameters,
        python_model=LOOP_CLASS,
        decoupled=True,
    )


def draws_in_triton(job: Generation, tiled: bool = False) -> bool:
    """Whether the loop inside Triton draws ``job``: text to image, no adapters, no kept latents, no tiled decode.

    The rest (input images, ControlNets, LoRAs, IP-Adapter references, videos, the approximate cache, a decode in
    tiles) runs on the replica's loop, one Triton call per engine per step (docs/guides/gpu.md says which path each
    request kind takes).
    """
    inputs, adapters = job.inputs, job.adapters
    from_text = not inputs.images and inputs.mask is None and not inputs.controls and job.motion is None
    adapted = bool(adapters.loras or adapters.ip)
    return from_text and not adapted and not job.cache.approximate and not tiled


@dataclass(frozen=True)
class LoopRequest:
    """One request to the loop model: a generation (with its id, whether it merges and reports steps), or a cancel."""

    job: Generation | None = None
    id: str = ""
    merge: bool = True
    progress: bool = False
    cancel: str = ""  # the id of a generation to stop

    @classmethod
    def drawing(cls, job: Generation, merge: bool = True, progress: bool = False) -> LoopRequest:
        """A generation's request, under a new id."""
        return cls(job, uuid.uuid4().hex, merge, progress)

    def encode(self) -> np.ndarray:
        """The request as the loop model's input (its JSON, ``uint8``)."""
        if self.cancel:
            body = {"cancel": self.cancel}
        else:
            job = self.job
            generation = {"sampling": dataclasses.asdict(job.sampling), "priority": job.priority.value}
            generation["cache_interval"] = job.cache.interval
            body = {"id": self.id, "generation": generation, "merge": self.merge, "progress": self.progress}
        return np.frombuffer(json.dumps(body).encode(), dtype=np.uint8)

    @classmethod
    def decode(cls, raw: bytes) -> LoopRequest:
        """The request of one input; a ValueError names what is wrong."""
        try:
            body = json.loads(raw)
            if "cancel" in body:
                return cls(cancel=str(body["cancel"]))
            generation = body["generation"]
            sampling = generation["sampling"]  # JSON has lists where the dataclass has tuples
            sampling = SamplingParams(**{**sampling, "seeds": tuple(sampling.get("seeds", ()))})
            job = Generation(
                sampling,
                priority=Priority(generation.get("priority", Priority.NORMAL.value)),
                cache=CachePolicy(interval=int(generation.get("cache_interval", 1))),
            )
            merge, progress = bool(body.get("merge", True)), bool(body.get("progress", False))
            return cls(job, str(body.get("id", "")), merge, progress)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{GENERATION_INPUT}: not a generation ({type(error).__name__}: {error})") from None


def encode_event(event: dict) -> np.ndarray:
    """An event's JSON as ``uint8``."""
    return np.frombuffer(json.dumps(event).encode(), dtype=np.uint8)


def decode_event(raw: np.ndarray | None) -> dict:
    """An event read back (none: ``{}``)."""
    return {} if raw is None or not raw.size else json.loads(raw.tobytes())
