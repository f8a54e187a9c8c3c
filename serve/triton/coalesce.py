"""Merge engine calls that are ready at the same moment into one request, so many generations cost one round trip.

A replica with several generations in flight resumes them together when Triton answers a batch; each then asks for
its next UNet step. Sending those as one request (rows stacked on the batch axis) instead of one each saves the gRPC
client, tritonserver and python-backend work per call; Triton's dynamic batcher still merges what several replicas
send. A lone call waits only for the event loop's current turn to end.

Over a runner that runs one call at a time (the engines in Triton's own process, the loop inside Triton), ``serial``
keeps at most one request per engine and shape in flight: calls made while it runs wait and go out together the
turn after it ends, beside the next steps of the generations it answered. Without it, a generation that starts while
another's step runs sends its steps in the gaps, out of phase for good: on an H200 eight such generations made 3.6
images/s where one made 3.0 (docs/DECISIONS-GPU.md). A request whose outputs are tensors on a GPU returns as soon as
it is queued there: it stays in flight until the GPU has run it, or until every call it answered has sent its next
one, whichever comes first (without that, on an H200, 16 generations sent 3.2 rows per UNet request instead of 32).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from serve.triton.spec import EngineRunner, ModelSpec, gpu_work, on_gpu


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
        self._awaited: dict[tuple, tuple[int, asyncio.Event]] = {}  # a GPU request's callers, back when all are
        self._tasks: set[asyncio.Task] = set()

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Queue ``inputs`` for ``spec``'s next merged request (one per priority) and return this call's rows."""
        if spec.max_batch_size <= 0:
            return await self.runner.infer(spec, inputs, priority)
        if on_gpu(inputs):  # the loop inside Triton's tensors: merged where they are
            arrays = {t.name: inputs[t.name] for t in spec.inputs}
        else:
            arrays = {t.name: np.asarray(inputs[t.name], dtype=t.numpy_dtype) for t in spec.inputs}
        key = (spec.name, priority, *((name, array.shape[1:]) for name, array in arrays.items()))
        call = _Call(arrays, len(next(iter(arrays.values()))), asyncio.get_running_loop().create_future())
        if key not in self._pending:
            self._pending[key] = (spec, [])
            if key not in self._running:  # else the running request's end sends it
                asyncio.get_running_loop().call_soon(self._flush, key)
        self._pending[key][1].append(call)
        if key in self._awaited and len(self._pending[key][1]) >= self._awaited[key][0]:
            self._awaited[key][1].set()  # every call it answered is back: the next request need not wait for the GPU
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
                ran = await self._send(spec, group, key[1])
                if ran is not None:
                    await self._in_flight(key, ran, len(group))
        finally:
            self._running.discard(key)
            # After the answered generations' next calls: their wake-ups were queued when their results were set.
            asyncio.get_running_loop().call_soon(self._flush, key)

    async def _in_flight(self, key: tuple, ran: Callable[[], None], callers: int) -> None:
        """A GPU request in flight: until the GPU has run it (``ran`` returns), or its ``callers`` all call again."""
        back = asyncio.Event()
        self._awaited[key] = (callers, back)
        waits = [asyncio.ensure_future(asyncio.to_thread(ran)), asyncio.ensure_future(back.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            del self._awaited[key]
            waits[1].cancel()  # the GPU's wait ends on its own

    async def _send(self, spec: ModelSpec, calls: list[_Call], priority: int) -> Callable[[], None] | None:
        """Send ``calls`` as one request; for outputs on a GPU, the wait until it has run them."""
        self.sent[f"{spec.name} requests"] += 1
        self.sent[f"{spec.name} rows"] += sum(call.rows for call in calls)
        inputs = {name: _concatenated([call.inputs[name] for call in calls]) for name in calls[0].inputs}
        try:
            outputs = await self.runner.infer(spec, inputs, priority)
        except Exception as error:  # every call in the request gets the error
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(error)
            return None
        ran = gpu_work(outputs)  # marked before the callers queue their next work
        start = 0
        for call in calls:
            if not call.future.done():
                call.future.set_result({name: out[start : start + call.rows] for name, out in outputs.items()})
            start += call.rows
        return ran


def _concatenated(parts: list) -> object:
    """Calls' rows stacked: NumPy arrays, or tensors on a GPU (where they stay)."""
    if len(parts) == 1:
        return parts[0]
    if getattr(parts[0], "is_cuda", False):
        import torch

        return torch.cat(parts)
    return np.concatenate(parts)


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
