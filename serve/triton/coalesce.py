"""Merge engine calls that are ready at the same moment into one request, so many generations cost one round trip.

A replica with several generations in flight resumes them together when Triton answers a batch; each then asks for
its next UNet step. Sending those as one request (rows stacked on the batch axis) instead of one each saves the gRPC
client, tritonserver and python-backend work per call; Triton's dynamic batcher still merges what several replicas
send. A lone call waits only for the event loop's current turn to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from serve.triton.spec import EngineRunner, ModelSpec


@dataclass
class _Call:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future = field(repr=False)


class CoalescingRunner:
    """Wraps a runner; batched models' calls issued in the same event-loop turn go out as one request per shape."""

    def __init__(self, runner: EngineRunner) -> None:
        self.runner = runner
        self._pending: dict[tuple, tuple[ModelSpec, list[_Call]]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Queue ``inputs`` for ``spec``'s next merged request (one per priority) and return this call's rows."""
        if spec.max_batch_size <= 0:
            return await self.runner.infer(spec, inputs, priority)
        arrays = {t.name: np.asarray(inputs[t.name], dtype=t.numpy_dtype) for t in spec.inputs}
        key = (spec.name, priority, *((name, array.shape[1:]) for name, array in arrays.items()))
        call = _Call(arrays, len(next(iter(arrays.values()))), asyncio.get_running_loop().create_future())
        if key not in self._pending:
            self._pending[key] = (spec, [])
            asyncio.get_running_loop().call_soon(self._flush, key)
        self._pending[key][1].append(call)
        return await call.future

    def _flush(self, key: tuple) -> None:
        spec, calls = self._pending.pop(key)
        for group in _fill([call for call in calls if not call.future.cancelled()], spec.max_batch_size):
            task = asyncio.create_task(self._send(spec, group, key[1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, spec: ModelSpec, calls: list[_Call], priority: int) -> None:
        inputs = {name: np.concatenate([call.inputs[name] for call in calls]) for name in calls[0].inputs}
        try:
            outputs = await self.runner.infer(spec, inputs, priority)
        except Exception as error:  # every call in the request gets the error
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(error)
            return
        start = 0
        for call in calls:
            if not call.future.done():
                call.future.set_result({name: out[start : start + call.rows] for name, out in outputs.items()})
            start += call.rows


def _fill(calls: list[_Call], max_rows: int) -> list[list[_Call]]:
    """Split ``calls`` in order into groups of at most ``max_rows`` rows (a call larger than that goes alone)."""
    groups: list[list[_Call]] = []
    rows = 0
    for call in calls:
        if not groups or rows + call.rows > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(call)
        rows += call.rows
    return groups
