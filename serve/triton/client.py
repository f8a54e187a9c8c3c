"""Async KServe v2 gRPC client for Triton, typed by the model specs; connection failures become ``NotReady``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from serve.errors import InvalidInput, NotReady
from serve.triton.spec import ModelSpec, triton_dtype_name

logger = logging.getLogger(__name__)

# Triton down or restarting, a model being reloaded by the supervisor, a stub that died: retryable, never a 500.
_UNAVAILABLE = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "not ready",
    "unavailable",
    "failed to connect",
    "not healthy",
    "unknown model",
    "is not found",
    "Socket closed",
)


CALL_TIMEOUT_S = 600.0
"""The longest one engine call may take. A hung engine is the supervisor's to find (its canary); this is the last
resort. It is long because a UNet call of the largest admitted request (8 rows at 1024x1024, run in slices that fit
the memory budget) took 100-130 s on a 2-core CPU, and a call may queue behind another request's batch."""

# Triton 2.51 (the binary nvidia-pytriton 0.7 ships) has races between a gRPC call's cancellation and its response
# (triton-inference-server/server#7368, #8034: SIGSEGV in the response path; fixed in later releases). So Easel never
# cancels a call it sent: a caller that gives up (client gone, job canceled, past ``timeout_s``) stops waiting and the
# call runs out on its own; Triton would have finished the batch anyway.


class TritonClient:
    """One gRPC channel to Triton; ``infer`` sends numpy arrays named by a :class:`ModelSpec`."""

    def __init__(self, url: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._abandoned: set[asyncio.Future] = set()
        # Reconnect within a second once Triton is back, rather than gRPC's default backoff of up to 2 minutes.
        self._client = InferenceServerClient(
            url,
            channel_args=[
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.max_send_message_length", 256 << 20),
                ("grpc.max_receive_message_length", 256 << 20),
            ],
        )

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Run ``spec``'s model on ``inputs`` (batch axis first) and return its outputs by name.

        ``priority``: Triton's priority level for the request (1 first; 0: the model's default).
        """
        request = []
        for tensor in spec.inputs:
            array = np.ascontiguousarray(inputs[tensor.name], dtype=tensor.numpy_dtype)
            if not tensor.dims and spec.max_batch_size > 0:  # per-sample scalar travels as [batch, 1]
                array = array.reshape(-1, 1)
            item = InferInput(tensor.name, list(array.shape), triton_dtype_name(tensor.dtype))
            item.set_data_from_numpy(array)
            request.append(item)
        outputs = [InferRequestedOutput(t.name) for t in spec.outputs]
        call = asyncio.ensure_future(self._client.infer(spec.name, request, outputs=outputs, priority=priority))
        try:
            result = await asyncio.wait_for(asyncio.shield(call), self.timeout_s)
        except InferenceServerException as error:
            raise translate(error, spec.name) from error
        except TimeoutError as error:
            raise NotReady(f"Triton model {spec.name!r} took over {self.timeout_s:.0f} s", retry_after_s=5) from error
        finally:
            if not call.done():  # given up on: let it finish, never cancel it (see above)
                self._abandoned.add(call)
                call.add_done_callback(self._forget)
        return {t.name: result.as_numpy(t.name) for t in spec.outputs}

    def _forget(self, call: asyncio.Future) -> None:
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: an abandoned call's error is nobody's to report

    async def models_ready(self, names: tuple[str, ...]) -> dict[str, bool]:
        """Readiness of each model; all False when Triton cannot be reached."""
        try:
            return {name: await self._client.is_model_ready(name) for name in names}
        except InferenceServerException as error:
            logger.warning("Triton at %s unreachable: %s", self.url, error.message())
            return dict.fromkeys(names, False)

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()


def translate(error: InferenceServerException, model: str) -> Exception:
    """The error a Triton call's ``error`` means for Easel: NotReady (retry), InvalidInput, or itself."""
    text = f"{error.status()} {error.message()}"
    if any(marker in text for marker in _UNAVAILABLE):
        return NotReady(f"Triton model {model!r} is unavailable: {error.message()}", retry_after_s=5)
    if "INVALID_ARG" in text:
        return InvalidInput(f"Triton rejected the input of {model!r}: {error.message()}")
    return error
