"""The denoising loop inside Triton: one request per image, every step in Triton's process, steps of requests merged.

A replica that runs the loop itself crosses to Triton at every step: on a GPU that round trip (gRPC, the python
backend's stub, the tensors copied each way) cost about 25 ms per UNet call where the step itself costs 12-50 ms
(docs/DECISIONS.md). Here the loop runs where the engines are: :class:`TextToImageLoop` is a decoupled python-backend
model whose ``async execute`` runs each request's :class:`~serve.text_to_image.pipeline.TextToImagePipeline` on the
stub's event loop, over the engines opened in the same process (the torch runtime's on the GPU, with their CUDA
graphs), the steps of concurrent requests merged into one UNet call by the same
:class:`~serve.triton.coalesce.CoalescingRunner` a replica uses, ``serial`` here (the engines run one call at a time:
the calls made meanwhile go together after it, so generations that start at different moments still share steps).
A request's text embeddings are computed and kept in that process; its latents never leave it; one response carries
its images.

It serves text-to-image requests (a prompt, sampling, size, seed): the rest of the API (input images, adapters,
ControlNets, caches) would run on the replica's loop, step by step, as before. :class:`LoopClient` is its caller:
today ``easel bench gpu`` and the tests; a stack does not route requests to it yet (docs/guides/gpu.md).

Its tensors cross the stub by DLPack, never ``as_numpy``: the stub of Triton 2.51 (nvidia-pytriton 0.7) was built with a
pybind11 that predates NumPy 2, and on a machine with NumPy 2 its ``as_numpy`` reads garbage (seen on an H100: a
request's bytes read as ``0xE5E5E5E5``). So the request is its JSON as ``uint8``, not ``BYTES``, and the images go
back flat (that stub's DLPack check refuses torch's 4-D tensors as "not contiguous"), shaped again by the client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.triton.coalesce import CoalescingRunner
from serve.triton.spec import ModelSpec, TensorSpec
from serve.triton.torch_runtime import TorchSession

logger = logging.getLogger(__name__)

LOOP_MODEL = "text_to_image_loop"
GENERATION_INPUT = "generation"
IMAGES_OUTPUT = "images"
LOG_EVERY = 8
"""Generations between two log lines of how well steps merge (each engine's requests and rows)."""


def loop_spec(engine_dir: Path, prefix: str = "", buckets: tuple[int, ...] = ()) -> ModelSpec:
    """The loop model of the engine folder ``engine_dir`` (Triton name ``prefix`` + :data:`LOOP_MODEL`).

    ``buckets``: the denoisers' buckets it captures instead of their ``torch.json``'s (to measure others).
    """
    parameters = {"engine_dir": str(engine_dir)} | ({"buckets": ",".join(map(str, buckets))} if buckets else {})
    return ModelSpec(
        name=f"{prefix}{LOOP_MODEL}",
        inputs=(TensorSpec(GENERATION_INPUT, "uint8", (-1,), ("bytes",)),),
        outputs=(TensorSpec(IMAGES_OUTPUT, "uint8", (-1,), ("pixels",)),),  # n x height x width x 3, flat
        parameters=parameters,
        python_model=f"{__name__}:TextToImageLoop",
        decoupled=True,
    )


def encode_request(sampling: SamplingParams, merge: bool = True) -> np.ndarray:
    """The loop model's input for one generation: its sampling as JSON (``merge``: its steps may share UNet calls)."""
    body = json.dumps({"sampling": dataclasses.asdict(sampling), "merge": merge})
    return np.frombuffer(body.encode(), dtype=np.uint8)


def decode_request(raw: bytes) -> tuple[Generation, bool]:
    """(the generation, whether its steps are merged) of one request's input; a ValueError names what is wrong."""
    try:
        body = json.loads(raw)
        sampling = body["sampling"]  # JSON has lists where the dataclass has tuples
        sampling = SamplingParams(**{**sampling, "seeds": tuple(sampling.get("seeds", ()))})
        return Generation(sampling), bool(body.get("merge", True))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{GENERATION_INPUT}: not a generation ({type(error).__name__}: {error})") from None


class LoopEngines:
    """A model's engines opened in this process (on ``device``), and the loop over them, merged or not.

    ``buckets``: the denoisers' buckets (within each one's batch limit) instead of their own.
    """

    def __init__(self, folder: EngineFolder, device: str | None = None, buckets: tuple[int, ...] = ()) -> None:
        engines = OnnxRuntimeRunner(folder, device=device)
        for name, session in engines.sessions.items():
            if isinstance(session, TorchSession) and session.engine.buckets:  # the torch runtime's: at the start
                limit = folder.specs[name].max_batch_size
                session.capture([size for size in buckets if size <= limit] if buckets else None)
        self.coalescing = CoalescingRunner(engines, serial=True)
        self.merged = TextToImagePipeline(folder, self.coalescing)
        self.unmerged = TextToImagePipeline(folder, engines)
        self.answered = 0

    async def generate(self, job: Generation, merge: bool = True) -> np.ndarray:
        """``job``'s images, ``[n, height, width, 3]`` uint8."""
        result = await (self.merged if merge else self.unmerged).generate(job)
        self.answered += 1
        return np.stack(result.images)

    def sessions(self) -> dict:
        """The engines' sessions by engine name."""
        return self.coalescing.runner.sessions

    def merging(self) -> str:
        """How well steps merge so far: each engine's requests and rows."""
        return f"{self.answered} generations; requests and rows per engine: {dict(self.coalescing.sent)}"


class TextToImageLoop:
    """The python-backend model (decoupled, ``async execute``): each request's loop runs on the stub's event loop."""

    def initialize(self, args: dict) -> None:
        """Open the engines of the folder the config's ``engine_dir`` names, on this instance's device."""
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        folder = EngineFolder(config["parameters"]["engine_dir"]["string_value"])
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        buckets = config["parameters"].get("buckets", {}).get("string_value", "")
        self.engines = LoopEngines(folder, device, tuple(int(size) for size in buckets.split(",") if size))
        captured = {name: s.buckets for name, s in self.engines.sessions().items() if getattr(s, "buckets", ())}
        pb_utils.Logger.log_info(f"{config['name']}: the loop of {folder.key} on {device}, buckets {captured}")

    async def execute(self, requests: list) -> None:
        """Run every request's generation (concurrently with those of other calls); each is answered when done."""
        await asyncio.gather(*(self._answer(request) for request in requests))

    async def _answer(self, request) -> None:
        import torch
        import triton_python_backend_utils as pb_utils

        sender = request.get_response_sender()
        try:
            given = torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, GENERATION_INPUT))
            job, merge = decode_request(given.cpu().numpy().tobytes())
            images = torch.from_numpy(await self.engines.generate(job, merge))
            if self.engines.answered % LOG_EVERY == 0:
                pb_utils.Logger.log_info(self.engines.merging())  # Triton's log (the stub's logging goes nowhere)
            flat = pb_utils.Tensor.from_dlpack(IMAGES_OUTPUT, images.reshape(-1))
            response = pb_utils.InferenceResponse(output_tensors=[flat])
        except Exception as error:  # noqa: BLE001 - this request's error; the others run on
            logger.warning("%s", error)
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class LoopClient:
    """Sends generations to a Triton's loop model over gRPC (a decoupled model answers on a stream)."""

    def __init__(self, url: str, model: str = LOOP_MODEL) -> None:
        from tritonclient.grpc.aio import InferenceServerClient

        self.model = model
        self._client = InferenceServerClient(url)

    async def generate(self, sampling: SamplingParams, merge: bool = True) -> np.ndarray:
        """The images of one generation, ``[n, height, width, 3]`` uint8."""
        from tritonclient.grpc import InferInput

        request = encode_request(sampling, merge)
        given = InferInput(GENERATION_INPUT, list(request.shape), "UINT8")
        given.set_data_from_numpy(request)

        async def one_request():
            yield {"model_name": self.model, "inputs": [given]}

        images = None
        async for result, error in self._client.stream_infer(one_request()):
            if error is not None:
                raise RuntimeError(f"{self.model}: {error}")
            images = result.as_numpy(IMAGES_OUTPUT)
        if images is None:
            raise RuntimeError(f"{self.model}: the stream closed without an answer")
        return images.reshape(-1, sampling.height, sampling.width, 3)

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()
