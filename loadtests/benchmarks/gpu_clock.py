"""``easel bench gpu``'s clock: a hard deadline, its shares per model and stage, and rows that stop at it.

A lent GPU machine ends a command at 10 minutes and returns what it wrote: the run must end by itself, on time, with
every row it measured written. :class:`Deadline` is checked before every call a row makes (not only between rows): a
row running when its deadline comes stops issuing calls and is kept with what it measured, marked partial
(:func:`timed_calls`). Each model gets a share of what is left (:meth:`Deadline.share`), so a slow first model does
not starve the last one; :class:`Watchdog` ends a process stuck past the whole run's deadline in a call that cannot
be interrupted (a build, a server start), after its ``on_expiry`` wrote the files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loadtests.benchmarks import loop

logger = logging.getLogger(__name__)

GRACE_S = 20.0
"""Seconds a call in flight at its row's deadline may still take before the row stops waiting for it."""


class Deadline:
    """A moment on the monotonic clock (``end``), checked by every row; ``clock`` is replaceable for tests."""

    def __init__(self, end: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.end, self.clock = end, clock

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(clock() + seconds, clock)

    def left_s(self) -> float:
        """Seconds left (negative once past)."""
        return self.end - self.clock()

    def expired(self) -> bool:
        """Whether the deadline has come."""
        return self.left_s() <= 0

    def share(self, weight: float, weights_left: float) -> Deadline:
        """The deadline of a part weighing ``weight`` of the ``weights_left`` to run: its share of the time left."""
        fraction = 1.0 if weights_left <= weight else weight / weights_left
        return Deadline(self.clock() + max(0.0, self.left_s()) * fraction, self.clock)

    def within(self, seconds: float) -> Deadline:
        """This deadline, or ``seconds`` from now if that comes first (a stage's cap)."""
        return Deadline(min(self.end, self.clock() + seconds), self.clock)


@dataclass(frozen=True)
class Timed:
    """What a row measured: each call's latency (s), their wall time and busy CPU seconds, whether it was cut."""

    latencies_s: tuple[float, ...]
    wall_s: float
    partial: bool
    cpu_s: float = 0.0


async def timed_calls(
    call: Callable[[int], Awaitable], concurrency: int, total: int, deadline: Deadline, warmup: int = 0
) -> Timed:
    """``warmup`` calls, then ``total`` timed calls from ``concurrency`` slots; no call starts after ``deadline``.

    A slot calls again as soon as its call returns. Calls in flight when the deadline comes may end within
    :data:`GRACE_S`; past that they are abandoned. A row cut short (or one whose warm-up was) is ``partial``.
    """
    warm = await _closed_loop(call, concurrency, warmup, deadline) if warmup else Timed((), 0.0, False)
    if warm.partial:
        return Timed((), 0.0, True)
    return await _closed_loop(call, concurrency, total, deadline)


async def _closed_loop(call: Callable[[int], Awaitable], concurrency: int, total: int, deadline: Deadline) -> Timed:
    latencies: list[float] = []
    ends: list[float] = []
    indices = iter(range(total))
    cut = False

    async def slot() -> None:
        nonlocal cut
        for index in indices:
            if deadline.expired():
                cut = True
                return
            started = time.perf_counter()
            await call(index)
            ends.append(time.perf_counter())
            latencies.append(ends[-1] - started)

    started, busy = time.perf_counter(), loop.busy_s()
    tasks = [asyncio.ensure_future(slot()) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(0.0, deadline.left_s()) + GRACE_S)
    except TimeoutError:
        logger.warning("calls still in flight %.0f s past the deadline: abandoned", GRACE_S)
        cut = True
    wall = (max(ends) - started) if ends else 0.0
    return Timed(tuple(latencies), wall, cut or len(latencies) < total, loop.busy_s() - busy)


class Watchdog:
    """Calls ``on_expiry`` and ends the process (exit code 3) if it is still running ``grace_s`` past ``deadline``.

    For a main thread stuck in a call no deadline check reaches; :meth:`cancel` once the run has ended.
    """

    def __init__(self, deadline: Deadline, on_expiry: Callable[[], None], grace_s: float = 30.0) -> None:
        self._timer = threading.Timer(max(0.0, deadline.left_s()) + grace_s, self._expire, args=(on_expiry,))
        self._timer.daemon = True

    def start(self) -> Watchdog:
        """Arm it."""
        self._timer.start()
        return self

    def cancel(self) -> None:
        """Disarm it."""
        self._timer.cancel()

    @staticmethod
    def _expire(on_expiry: Callable[[], None]) -> None:
        logger.error("the run is past its deadline in a call that cannot be interrupted: ending it")
        try:
            on_expiry()
        finally:
            logging.shutdown()
            os._exit(3)
