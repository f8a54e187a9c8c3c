"""The replica's door to a model's loop inside Triton: a generation sent whole, its steps streamed back.

:class:`TritonLoop` draws what :func:`~serve.text_to_image.loop_protocol.draws_in_triton` accepts, with the
interface of :meth:`TextToImagePipeline.generate <serve.text_to_image.pipeline.TextToImagePipeline.generate>`, so
the replica calls either the same way: each step reported to its callback (with the latents a preview reads), its
result the same :class:`~serve.text_to_image.generation.GenerationResult`. A caller that stops waiting (its client
went away, its job was canceled) asks the loop to stop the generation at its next step; the call itself is never
canceled (:mod:`serve.triton.client`), it ends on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np

from serve import errors
from serve.errors import EaselError
from serve.text_to_image.generation import Generation, GenerationResult, StepCallback
from serve.text_to_image.loop_protocol import (
    EVENT_OUTPUT,
    GENERATION_INPUT,
    IMAGES_OUTPUT,
    LATENTS_OUTPUT,
    LOOP_MODEL,
    LoopRequest,
    decode_event,
)

logger = logging.getLogger(__name__)


class TritonLoop:
    """Sends generations to one Triton loop model over gRPC (a decoupled model answers on a stream)."""

    def __init__(self, url: str, model: str = LOOP_MODEL) -> None:
        self.url, self.model = url, model
        self._channel = None
        self._running: set[asyncio.Task] = set()  # streams a caller stopped reading, running out on their own

    @property
    def _client(self):
        """The gRPC client, made on first use in the event loop that uses it (a replica builds this in a thread)."""
        if self._channel is None:
            from tritonclient.grpc.aio import InferenceServerClient

            self._channel = InferenceServerClient(self.url)
        return self._channel

    async def generate(
        self,
        job: Generation,
        tiling=None,
        on_step: StepCallback | None = None,
        rows_per_call: Mapping[str, int] | None = None,
        merge: bool = True,
    ) -> GenerationResult:
        """``job`` drawn inside Triton; ``on_step`` hears each step (latents where a preview reads them, else None).

        ``tiling`` and ``rows_per_call`` are the replica loop's (a tiled decode is never sent here; the loop merges
        rows as its engines allow).
        """
        request = LoopRequest.drawing(job, merge, progress=on_step is not None)
        events: asyncio.Queue = asyncio.Queue()
        stream = asyncio.ensure_future(self._stream(request, events))
        self._running.add(stream)
        stream.add_done_callback(self._running.discard)
        try:
            while True:
                event, images, latents = await events.get()
                if "step" in event:
                    shaped = None if latents is None else latents.reshape(event["shape"])
                    await on_step(event["step"], event["total"], shaped)
                    continue
                return _result(job, event, images)
        except BaseException:  # canceled, or a step callback's error: the loop stops at its next step
            if not stream.done():
                asyncio.ensure_future(self._cancel(request.id))
            raise

    async def _stream(self, request: LoopRequest, events: asyncio.Queue) -> None:
        """Read the generation's stream to its end, each response an event on ``events``."""
        answered = False  # the stream is read to its end after the answer too: a call is never cut short
        try:
            async for result, error in self._client.stream_infer(_one(self.model, request)):
                if error is not None:
                    raise _raised(error, self.model)
                event = decode_event(result.as_numpy(EVENT_OUTPUT))
                events.put_nowait((event, result.as_numpy(IMAGES_OUTPUT), result.as_numpy(LATENTS_OUTPUT)))
                answered = answered or "step" not in event
        except Exception as error:  # noqa: BLE001 - handed to the caller waiting on the events
            events.put_nowait(({"raised": error}, None, None))
            return
        if not answered:
            closed = errors.NotReady(f"{self.model}: the stream closed without an answer")
            events.put_nowait(({"raised": closed}, None, None))

    async def _cancel(self, request_id: str) -> None:
        try:
            async for _, error in self._client.stream_infer(_one(self.model, LoopRequest(cancel=request_id))):
                if error is not None:
                    logger.warning("%s: cancel of %s: %s", self.model, request_id, error)
        except Exception as error:  # noqa: BLE001 - the generation runs out instead
            logger.warning("%s: cancel of %s not sent: %s", self.model, request_id, error)

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()


async def _one(model: str, request: LoopRequest):
    from tritonclient.grpc import InferInput

    encoded = request.encode()
    given = InferInput(GENERATION_INPUT, list(encoded.shape), "UINT8")
    given.set_data_from_numpy(encoded)
    yield {"model_name": model, "inputs": [given]}


def _result(job: Generation, event: dict, images: np.ndarray | None) -> GenerationResult:
    """The generation's result from its final event, or the error it names raised."""
    if "raised" in event:
        raise event["raised"]
    if "error" in event:
        raise _easel_error(event["error"])
    if event.get("canceled"):
        raise errors.NotReady("the loop stopped the generation: it was canceled")
    sampling = job.sampling
    pixels = images.reshape(-1, sampling.height, sampling.width, 3)
    return GenerationResult(list(pixels), int(event["seed"]), int(event.get("dropped", 0)))


def _easel_error(error: dict) -> EaselError:
    """The Easel error the loop sent back (its class by name; an unknown name: a 500)."""
    kind = getattr(errors, str(error.get("type")), None)
    kind = kind if isinstance(kind, type) and issubclass(kind, EaselError) else EaselError
    return kind(str(error.get("message", "")), error.get("field"))


def _raised(error, model: str) -> Exception:
    from serve.triton.client import translate

    return translate(error, model)
