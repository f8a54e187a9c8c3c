"""Generation priority: which requests start first, whose denoising steps go first, in the replica and in Triton.

Three levels (``high``, ``normal``, ``low``; synchronous requests and jobs alike). A replica starts waiting requests
in priority order (:class:`serve.models.admission.Admission`); while a generation of a higher priority is in
flight, lower ones hold their next UNet step (:class:`PriorityGate`), so the higher one's steps run in batches of
their own instead of beside a saturating load; and every engine call carries its level to Triton, whose dynamic
batcher takes higher levels first from its queue (``priority_levels`` in the engines' configs). The gate works per
replica: across replicas only Triton's queue order separates the levels.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Priority(enum.StrEnum):
    """A generation's priority, as the API names it."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent; also the order jobs are claimed in."""
        return list(Priority).index(self)

    @property
    def triton_level(self) -> int:
        """Triton's priority level (1 is served first; 0 would mean the model's default)."""
        return self.rank + 1


TRITON_PRIORITY_LEVELS = len(Priority)
TRITON_DEFAULT_LEVEL = Priority.NORMAL.triton_level
PRIORITIES = {"priority_levels": TRITON_PRIORITY_LEVELS, "default_priority_level": TRITON_DEFAULT_LEVEL}
"""Every generation engine's dynamic-batching priority settings (Triton's queue order follows the request's level)."""


class PriorityGate:
    """Lower-priority generations wait at each step while a higher-priority one is in flight in this replica."""

    def __init__(self) -> None:
        self._active: Counter[int] = Counter()
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def active(self, priority: Priority) -> AsyncIterator[None]:
        """Mark a generation of ``priority`` in flight for the block."""
        async with self._changed:
            self._active[priority.rank] += 1
        try:
            yield
        finally:
            async with self._changed:
                self._active[priority.rank] -= 1
                self._changed.notify_all()

    def _higher_active(self, priority: Priority) -> bool:
        return any(self._active[rank] > 0 for rank in range(priority.rank))

    async def turn(self, priority: Priority) -> None:
        """Return when no generation of a higher priority is in flight."""
        if not self._higher_active(priority):
            return
        async with self._changed:
            await self._changed.wait_for(lambda: not self._higher_active(priority))
