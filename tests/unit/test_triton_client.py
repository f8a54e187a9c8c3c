"""The Triton client never cancels a call it sent (Triton 2.51 can crash on a cancellation racing its response)."""

import asyncio

import numpy as np
import pytest

from serve.errors import NotReady
from serve.triton.client import TritonClient
from serve.triton.spec import ModelSpec, TensorSpec

SPEC = ModelSpec("m", (TensorSpec("x", "float32", (2,)),), (TensorSpec("y", "float32", (2,)),), max_batch_size=4)


class _Result:
    def as_numpy(self, name: str) -> np.ndarray:
        return np.ones((1, 2), np.float32)


class _SlowServer:
    """Stands in for the gRPC channel: each call takes ``seconds``; records how calls ended."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.finished, self.cancelled = seconds, 0, 0

    async def infer(self, *args, **kwargs) -> _Result:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return _Result()


def _client(seconds: float, timeout_s: float = 60.0) -> tuple[TritonClient, _SlowServer]:
    client = TritonClient("127.0.0.1:1", timeout_s=timeout_s)  # gRPC channels connect lazily: nothing is dialled
    server = client._client = _SlowServer(seconds)
    return client, server


def test_a_canceled_caller_leaves_its_call_running():
    async def scenario():
        client, server = _client(0.2)
        caller = asyncio.ensure_future(client.infer(SPEC, {"x": np.zeros((1, 2))}))
        await asyncio.sleep(0.05)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert len(client._abandoned) == 1
        await asyncio.sleep(0.3)
        return server, client

    server, client = asyncio.run(scenario())
    assert (server.finished, server.cancelled) == (1, 0) and not client._abandoned


def test_a_call_past_the_timeout_is_not_ready_and_not_canceled():
    async def scenario():
        client, server = _client(0.3, timeout_s=0.05)
        with pytest.raises(NotReady, match="took over"):
            await client.infer(SPEC, {"x": np.zeros((1, 2))})
        await asyncio.sleep(0.4)
        return server

    server = asyncio.run(scenario())
    assert (server.finished, server.cancelled) == (1, 0)


def test_an_answer_in_time_is_returned():
    async def scenario():
        client, server = _client(0.0)
        return await client.infer(SPEC, {"x": np.zeros((1, 2))}), server

    out, server = asyncio.run(scenario())
    assert out["y"].shape == (1, 2) and server.finished == 1
