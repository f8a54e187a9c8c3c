"""Merge engine calls that are ready at the same moment into one request, so many generations cost one round trip.

A replica with several generations in flight resumes them together when Triton answers a batch; each then asks for
its next UNet step. Sending those as one request (rows stacked on the batch axis) instead of one each saves the gRPC
client, tritonserver and python-backend work per call; Triton's dynamic batcher still merges what several replicas
send. A lone call waits only for the event loop's current turn to end.

Over a runner that runs one call at a time (the engines in Triton's own process, the loop inside Triton), ``serial``
keeps at most one request per engine and shape in flight: calls made while it runs wait and go out together the
turn after it ends, beside the next steps of the generations it answered. Without it, a generation that starts while
another's step runs sends its steps in the gaps, out of phase for good: on an H200 eight such generations made 3.6
images/s where one made 3.0 (docs/DECISIONS.md).
"""

from __future__ import annotations

import asyncio
from collections import Counter
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
    """Wraps a runner; batched models' calls issued in the same event-loop turn go out as one request per shape.

    ``serial``: at most one request per shape in flight, the calls made meanwhile sent together after it.
    :attr:`sent` counts each engine's requests and rows (rows / requests: how well steps merge).
    """

    def __init__(self, runner: EngineRunner, serial: bool = False) -> None:
        self.runner = runner
        self.serial = serial
        self.sent: Counter[str] = Counter()
        self._pending: dict[tuple, tuple[ModelSpec, list[_Call]]] = {}
        self._running: set[tuple] = set()
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
            if key not in self._running:  # else the running request's end sends it
                asyncio.get_running_loop().call_soon(self._flush, key)
        self._pending[key][1].append(call)
        return await call.future

    def _flush(self, key: tuple) -> None:
        if key not in self._pending or key in self._running:
            return
        spec, calls = self._pending.pop(key)
        groups = _fill([call for call in calls if not call.future.cancelled()], spec.max_batch_size)
        if self.serial:
            self._running.add(key)
            self._start(self._send_serially(spec, groups, key))
        else:
            for group in groups:
                self._start(self._send(spec, group, key[1]))

    def _start(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_serially(self, spec: ModelSpec, groups: list[list[_Call]], key: tuple) -> None:
        try:
            for group in groups:
                await self._send(spec, group, key[1])
        finally:
            self._running.discard(key)
            # After the answered generations' next calls: their wake-ups were queued when their results were set.
            asyncio.get_running_loop().call_soon(self._flush, key)

    async def _send(self, spec: ModelSpec, calls: list[_Call], priority: int) -> None:
        self.sent[f"{spec.name} requests"] += 1
        self.sent[f"{spec.name} rows"] += sum(call.rows for call in calls)
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
