"""The skeleton of a worker that leases work from a store: the job runner's and the webhook sender's, and the next's.

It claims while it has room, runs each claimed item in a task of its own, does its housekeeping now and then, and
looks again every ``poll_s`` or at once when woken. A store that fails is logged and tried again at the next look.
Each worker keeps only its own part: what a claim is (:meth:`LeaseWorker.claim`), what is done with an item
(:meth:`LeaseWorker.work`), what its housekeeping is, and what it books when an item is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class LeaseWorker(ABC, Generic[Item]):
    """Claims items while it has room and works each in a task, while its replica lives (``start`` to ``close``).

    ``name``: what its worker id (the lease holder a store records) begins with.
    """

    poll_s: float = 0.25
    housekeeping_s: float = 60.0

    def __init__(self, name: str) -> None:
        self.worker = f"{name}-{secrets.token_hex(6)}"
        self._working: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None  # held: the event loop keeps only weak references to tasks
        self._wake = asyncio.Event()

    @abstractmethod
    async def claim(self) -> Item | None:
        """The next item to work on, leased to this worker; None when there is none or no room for one."""

    @abstractmethod
    async def work(self, item: Item) -> object:
        """Work on a claimed ``item`` (its own task; what it raises is logged, never the loop's)."""

    async def housekeeping(self) -> None:
        """What the worker does every ``housekeeping_s`` (none by default)."""

    def finished(self, item: Item) -> None:
        """Book that ``item``'s work ended (its task is done, however it ended)."""

    def start(self) -> LeaseWorker[Item]:
        """Start claiming in the running event loop."""
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def wake(self) -> None:
        """Claim now rather than at the next poll (work was just added here, or an item of ours ended)."""
        self._wake.set()

    async def claim_due(self) -> int:
        """Claim while :meth:`claim` gives an item and start working on each; how many were started."""
        started = 0
        while (item := await self.claim()) is not None:
            task = asyncio.create_task(self.work(item))
            self._working.add(task)
            task.add_done_callback(lambda done, item=item: self._done(done, item))
            started += 1
        return started

    def _done(self, task: asyncio.Task, item: Item) -> None:
        self._working.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("%s: %s", self.worker, task.exception())
        self.finished(item)

    async def _loop(self) -> None:
        housekeeping = 0.0
        while True:
            try:
                await self.claim_due()
                if time.monotonic() - housekeeping > self.housekeeping_s:
                    housekeeping = time.monotonic()
                    await self.housekeeping()
            except Exception as error:  # noqa: BLE001 - the store may be briefly unreachable; keep trying
                logger.warning("%s: %s: %s", self.worker, type(error).__name__, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def wait_idle(self) -> None:
        """Wait for the work under way (tests, and a replica stopping)."""
        while self._working:
            await asyncio.gather(*self._working, return_exceptions=True)

    async def close(self) -> None:
        """Stop claiming; the work under way finishes."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.wait_idle()
