"""Fallback chains: a generation its model cannot serve goes to the next model of its chain that takes it.

"Cannot serve" (:func:`~serve.serving.ray_errors.cannot_serve`): its circuit is open, its engines are unavailable
(a 503), a timeout, no slot on its replica within ``--fallback-queue-wait-s`` (saturated). A link that cannot take
the request (an adapter, a size or a sampler it lacks: its check is a 400) is skipped, and why is logged. The answer
names who drew it (``Easel-Model``) and why (``Easel-Fallback``, the body's ``fallback``, so a job's record keeps it
too). A request with ``fallback: false`` never goes down the chain; no link left is a 503 naming the model. A request
that may go down a chain is priced at admission by the dearest link that can take it (:meth:`Fallbacks.priced`): a
sizeless request falling back to a remote pays for the remote's native size, not the primary's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from serve.errors import InvalidInput, NotReady
from serve.serving.ray_errors import cannot_serve

logger = logging.getLogger(__name__)

FALLBACK_HEADER = "Easel-Fallback"
Answer = TypeVar("Answer")
Relink = Callable[[str, object], Awaitable[object]]


@dataclass(frozen=True)
class Fallback:
    """A generation drawn by a fallback: the model it asked and why that one could not serve."""

    model: str
    reason: str

    def headers(self) -> dict[str, str]:
        """``Easel-Fallback``: the model asked and why (``xl circuit_open``); ``Easel-Model`` names the link."""
        return {FALLBACK_HEADER: f"{self.model} {self.reason}"}

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The trailing metadata of a gRPC call: the header, lower-case (``easel-fallback``)."""
        return tuple((name.lower(), value) for name, value in self.headers().items())

    def to_api(self) -> dict:
        """The answer's (and a job record's) ``fallback``."""
        return {"fallback": {"model": self.model, "reason": self.reason}}


class Fallbacks:
    """How a generation goes down its model's chain, as the table it was admitted against holds it.

    The chains: ``--fallback MODEL=LINK,...`` at the start, ``PUT /v1/models/{model_id}/fallback`` while it runs.
    ``relink``: a generation admitted again for another model (its rules checked: a 400 when it cannot take it).
    """

    def __init__(self, relink: Relink, queue_wait_s: float | None = None) -> None:
        self.relink = relink
        self.queue_wait_s = queue_wait_s  # how long a request that may fall back waits for its replica's slot

    def queue_wait(self, request, chain: tuple[str, ...]) -> float | None:
        """How long ``request`` waits for a slot: the queue wait where it may go down its model's ``chain``."""
        return self.queue_wait_s if request.fallback and chain else None

    @staticmethod
    def links(admitted) -> tuple[str, ...]:
        """The models ``admitted`` may go down to: its model's chain in the table it was admitted against.

        None where it says ``fallback: false``.
        """
        return admitted.models.chains.get(admitted.model.name, ()) if admitted.request.fallback else ()

    async def priced(self, admitted):
        """``admitted`` costing the most that any model it may be drawn by charges: its own, or a link's that takes it.

        A link that cannot take it (its check a 400, or removed since) is skipped when the chain is walked, so it
        prices nothing. Charged at admission, before any work: what it costs is known before it is drawn.
        """
        cost = admitted.cost
        for link in self.links(admitted):
            try:
                cost = max(cost, (await self.relink(link, admitted)).cost)
            except InvalidInput:
                continue
        return admitted if cost == admitted.cost else dataclasses.replace(admitted, cost=cost)

    async def served(self, admitted, run: Callable[[object], Awaitable[Answer]]) -> tuple[Answer, Fallback | None]:
        """``run(admitted)``, or where its model cannot serve, ``run`` of the first link that can (and why)."""
        asked, chain = admitted.model.name, self.links(admitted)
        try:
            return await run(admitted), None
        except Exception as error:
            reason = cannot_serve(error)
            if reason is None or not chain:
                raise
            first = error
        tried = [f"{asked}: {reason}"]
        for link in chain:
            try:
                relinked = await self.relink(link, admitted)
            except InvalidInput as refused:
                logger.warning("model %s: fallback %s skipped, it cannot take the request: %s", asked, link, refused)
                tried.append(f"{link}: cannot take it ({refused.field})")
                continue
            try:
                answer = await run(relinked)
            except Exception as error:
                why = cannot_serve(error)
                if why is None:
                    raise
                tried.append(f"{link}: {why}")
                continue
            logger.info("model %s: answered by its fallback %s (%s)", asked, link, reason)
            return answer, Fallback(asked, reason)
        why = f"model {asked} cannot serve and no model of its fallback chain could: {'; '.join(tried)}"
        raise NotReady(why, "model") from first
