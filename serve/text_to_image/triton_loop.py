"""The denoising loop inside Triton: one request per generation, every step in Triton's process, steps merged.

A replica that runs the loop itself crosses to Triton at every step: on a GPU that round trip (gRPC, the python
backend's stub, the tensors copied each way) cost about 25 ms per UNet call where the step itself costs 12-50 ms
(docs/DECISIONS.md). Here the loop runs where the engines are: :class:`TextToImageLoop` is a decoupled python-backend
model whose ``async execute`` runs each request's :class:`~serve.text_to_image.pipeline.TextToImagePipeline` on the
stub's event loop, over the engines opened in the same process (the torch runtime's on the GPU, with their CUDA
graphs), the steps of concurrent requests merged into one UNet call by the same
:class:`~serve.triton.coalesce.CoalescingRunner` a replica uses, ``serial`` here (the engines run one call at a time:
the calls made meanwhile go together after it, so generations that start at different moments still share steps).
A request's text embeddings are computed and kept in that process; its latents leave it only for a preview.

What it says and hears: :mod:`serve.text_to_image.loop_protocol`; who calls it: the ``TextToImage`` replica, for the
requests :func:`~serve.text_to_image.loop_protocol.draws_in_triton` accepts, through
:class:`~serve.text_to_image.loop_client.TritonLoop`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from serve.errors import EaselError
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Generation, GenerationResult, StepCallback
from serve.text_to_image.loop_protocol import (
    EVENT_OUTPUT,
    GENERATION_INPUT,
    IMAGES_OUTPUT,
    LATENTS_OUTPUT,
    LoopRequest,
    encode_event,
)
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.preview import wants_preview
from serve.triton.coalesce import CoalescingRunner
from serve.triton.graph_shapes import GraphShapes
from serve.triton.torch_runtime import TorchSession

logger = logging.getLogger(__name__)

LOG_EVERY = 8
"""Generations between two log lines of how well steps merge (each engine's requests and rows)."""
CANCEL_KEPT_S = 300.0
"""How long a cancel is remembered (one may arrive before its generation, or after it ended)."""


class Canceled(Exception):
    """The generation's caller asked the loop to stop it."""


class LoopEngines:
    """A model's engines opened in this process (on ``device``), and the loop over them, merged or not.

    ``buckets``: the denoisers' buckets (within each one's batch limit) instead of their own, at ``graphs``' shapes
    beside the native one (the stack's: :mod:`serve.triton.graph_shapes`). On a GPU whose engines
    all run on the torch runtime, a generation's tensors stay on it (:mod:`serve.text_to_image.resident`) unless
    ``resident`` is off (every step's inputs and outputs then cross the host, as the replica's loop does: to measure).
    """

    def __init__(
        self,
        folder: EngineFolder,
        device: str | None = None,
        buckets: tuple[int, ...] = (),
        resident: bool = True,
        graphs: GraphShapes | None = None,
    ) -> None:
        graphs = graphs or GraphShapes()
        engines = OnnxRuntimeRunner(folder, device=device)
        for name, session in engines.sessions.items():
            if isinstance(session, TorchSession) and session.engine.buckets:  # the torch runtime's: at the start
                limit = folder.specs[name].max_batch_size
                shapes = session.engine.capture_shapes(graphs.sizes, graphs.chunks)
                session.capture([size for size in buckets if size <= limit] if buckets else None, shapes)
        on_gpu = all(isinstance(s, TorchSession) and s.device.type == "cuda" for s in engines.sessions.values())
        self.device = device if on_gpu and resident else None  # where a generation's tensors stay (None: host)
        self.coalescing = CoalescingRunner(engines, serial=True)
        self.merged = TextToImagePipeline(folder, self.coalescing, device=self.device)
        self.unmerged = TextToImagePipeline(folder, engines, device=self.device)
        self.answered = 0

    async def draw(self, job: Generation, merge: bool = True, on_step: StepCallback | None = None) -> GenerationResult:
        """``job`` drawn (its steps merged with other generations' when ``merge``), ``on_step`` after each step."""
        result = await (self.merged if merge else self.unmerged).generate(job, on_step=on_step)
        self.answered += 1
        return result

    def sessions(self) -> dict:
        """The engines' sessions by engine name."""
        return self.coalescing.runner.sessions

    def merging(self) -> str:
        """How well steps merge so far: each engine's requests and rows."""
        return f"{self.answered} generations; requests and rows per engine: {dict(self.coalescing.sent)}"


class Cancels:
    """The ids of generations asked to stop, each remembered for :data:`CANCEL_KEPT_S`."""

    def __init__(self) -> None:
        self._asked: dict[str, float] = {}

    def ask(self, request_id: str) -> None:
        """Stop ``request_id`` at its next step (or at its start, if it has not started)."""
        now = time.monotonic()
        self._asked = {key: at for key, at in self._asked.items() if now - at < CANCEL_KEPT_S}
        self._asked[request_id] = now

    def check(self, request_id: str) -> None:
        """Raise :class:`Canceled` when ``request_id`` was asked to stop."""
        if request_id in self._asked:
            del self._asked[request_id]
            raise Canceled(request_id)


class TextToImageLoop:
    """The python-backend model (decoupled, ``async execute``): each request's loop runs on the stub's event loop."""

    def initialize(self, args: dict) -> None:
        """Open the engines of the folder the config's ``engine_dir`` names, on this instance's device."""
        import json

        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        folder = EngineFolder(config["parameters"]["engine_dir"]["string_value"])
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        if gpu:
            import torch

            torch.cuda.set_device(device)  # the streams and graphs of this instance's GPU, not device 0's
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        buckets = tuple(int(size) for size in parameters.get("buckets", "").split(",") if size)
        graphs = GraphShapes.read(Path(args["model_repository"]).parent)
        resident = parameters.get("resident", "1") == "1"
        self.engines = LoopEngines(folder, device, buckets, resident, graphs)
        self.cancels = Cancels()
        self.outcomes = _Outcomes(config["name"])
        captured = {name: s.buckets for name, s in self.engines.sessions().items() if getattr(s, "buckets", ())}
        where = "on the GPU" if self.engines.device else "crossing the host each step"
        message = f"{config['name']}: the loop of {folder.key} on {device}, buckets {captured}, its tensors {where}"
        pb_utils.Logger.log_info(message)

    async def execute(self, requests: list) -> None:
        """Run every request's generation (concurrently with those of other calls); each is answered when done."""
        await asyncio.gather(*(self._answer(request) for request in requests))

    async def _answer(self, request) -> None:
        import torch
        import triton_python_backend_utils as pb_utils

        answer = _Answer(request.get_response_sender())
        try:
            given = torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, GENERATION_INPUT))
            asked = LoopRequest.decode(given.cpu().numpy().tobytes())
        except ValueError as error:
            answer.failed(error)
            return
        if asked.cancel:
            self.cancels.ask(asked.cancel)
            answer.end()
            return

        async def step(index: int, total: int, latents: np.ndarray) -> None:
            self.cancels.check(asked.id)
            if asked.progress:
                answer.step(index, total, latents if wants_preview(index, total) else None)

        try:
            self.cancels.check(asked.id)
            result = await self.engines.draw(asked.job, asked.merge, step)
            answer.send({"seed": result.seed, "dropped": result.prompt_tokens_dropped}, images=np.stack(result.images))
            self.outcomes.count("drawn")
        except Canceled:
            answer.send({"canceled": True})
            self.outcomes.count("canceled")
        except EaselError as error:  # the caller raises it again (a generation that diverged, say)
            answer.send({"error": {"type": type(error).__name__, "message": error.message, "field": error.field}})
            self.outcomes.count("failed")
        except Exception as error:  # noqa: BLE001 - this request's error; the others run on
            logger.warning("%s", error)
            answer.failed(error)
            self.outcomes.count("failed")
        if self.engines.answered and self.engines.answered % LOG_EVERY == 0:
            pb_utils.Logger.log_info(self.engines.merging())  # Triton's log (the stub's logging goes nowhere)


class _Outcomes:
    """Triton's counter ``easel_loop_generations_total`` (its /metrics): the loop's generations by outcome."""

    def __init__(self, model: str) -> None:
        import triton_python_backend_utils as pb_utils

        kind = getattr(pb_utils, "MetricFamily", None)  # a stub without custom metrics counts nothing
        self.family = kind and kind(
            name="easel_loop_generations_total",
            description="Generations the loop inside Triton ended, by outcome: drawn, canceled, failed",
            kind=kind.COUNTER,
        )
        self.model, self.metrics = model, {}

    def count(self, outcome: str) -> None:
        """One generation more that ended with ``outcome``."""
        if self.family is None:
            return
        if outcome not in self.metrics:
            self.metrics[outcome] = self.family.Metric(labels={"model": self.model, "outcome": outcome})
        self.metrics[outcome].increment(1)


class _Answer:
    """One request's responses: its steps (each an event, a preview's with its latents), then its final one."""

    def __init__(self, sender) -> None:
        import triton_python_backend_utils as pb_utils

        self.sender, self.pb_utils = sender, pb_utils

    def step(self, index: int, total: int, latents: np.ndarray | None) -> None:
        """Step ``index`` of ``total`` done (with its latents, for a preview)."""
        shape = {} if latents is None else {"shape": list(latents.shape)}
        self._send({"step": index, "total": total} | shape, {LATENTS_OUTPUT: latents}, 0)

    def send(self, event: dict, images: np.ndarray | None = None) -> None:
        """The final response: ``event`` and the images."""
        self._send(event, {IMAGES_OUTPUT: images}, self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def failed(self, error: Exception) -> None:
        """The final response: Triton's error (the caller's client raises it)."""
        response = self.pb_utils.InferenceResponse(error=self.pb_utils.TritonError(str(error)))
        self.sender.send(response, flags=self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def end(self) -> None:
        """No response, the stream's end (a cancel's)."""
        self.sender.send(flags=self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _send(self, event: dict, arrays: dict[str, np.ndarray | None], flags: int) -> None:
        import torch

        tensors = [self.pb_utils.Tensor.from_dlpack(EVENT_OUTPUT, torch.from_numpy(encode_event(event).copy()))]
        for name, array in arrays.items():
            if array is not None:  # flat: the stub's DLPack check refuses torch's N-D tensors as "not contiguous"
                flat = torch.from_numpy(np.ascontiguousarray(array).reshape(-1))
                tensors.append(self.pb_utils.Tensor.from_dlpack(name, flat))
        self.sender.send(self.pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)
