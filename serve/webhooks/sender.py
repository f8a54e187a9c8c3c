"""The webhook sender: claims the outbox's due deliveries and POSTs each, signed, its attempt recorded.

Each Gateway replica runs one (:class:`WebhookSender`), beside its job runner. It looks for due deliveries every
:data:`POLL_S`, sends up to ``at_once`` at a time, each attempt bounded by ``timeout_s`` all told (connecting,
sending, waiting, reading at most :data:`MAX_ANSWER_BYTES` of the answer), and leases each for that and a margin: a
sender that dies mid-delivery leaves it due again when the lease ends, and the next sender sends it again, under the
same id. A 2xx answer delivers it; any other answer (a redirect too: none is followed), a timeout or a broken
connection is a failed attempt, made again at :class:`~serve.webhooks.settings.RetryTimes`' times until its attempts
run out. Keys take turns (the outbox's claim), and one key holds at most ``per_key`` of the slots: a key's receivers
that never answer cost it its own slots for ``timeout_s`` per attempt, and another key's delivery waits for a slot
at most one attempt's ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import httpx

from serve.errors import InvalidInput
from serve.lease_worker import LeaseWorker
from serve.webhooks.settings import DEFAULT_TIMEOUT_S, RetryTimes, WebhookSettings
from serve.webhooks.signing import Signer, signed_headers
from serve.webhooks.store import Delivery, Outbox

logger = logging.getLogger(__name__)

POLL_S = 0.5
HOUSEKEEPING_S = 60.0
LEASE_MARGIN_S = 5.0
"""A delivery's lease beyond its attempt's timeout (the attempt's record written meanwhile)."""
PER_KEY = 4
"""How many of a sender's slots one key's deliveries may hold at once (of 16)."""
MAX_ANSWER_BYTES = 4096
"""How much of a receiver's answer is read (its status is all that counts); the rest is never read."""


class WebhookSender(LeaseWorker[Delivery]):
    """Sends ``outbox``'s deliveries while its replica lives, each signed by ``signer``, where ``allowed`` allows.

    A delivery to a host no longer allowed (the stack restarted with other ``--webhook-hosts``), or of a key with no
    secret, fails at once.
    """

    poll_s = POLL_S
    housekeeping_s = HOUSEKEEPING_S

    def __init__(
        self,
        outbox: Outbox,
        signer: Signer,
        allowed: WebhookSettings,
        retries: RetryTimes = RetryTimes(),  # noqa: B008 - frozen
        timeout_s: float = DEFAULT_TIMEOUT_S,
        at_once: int = 16,
        per_key: int = PER_KEY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__("sender")
        self.outbox, self.signer, self.allowed = outbox, signer, allowed
        self.retries, self.timeout_s, self.at_once, self.per_key = retries, timeout_s, at_once, per_key
        self.client = httpx.AsyncClient(transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False)
        self._held: Counter[str | None] = Counter()  # the slots each key's attempts hold

    async def claim(self) -> Delivery | None:
        """The due delivery whose key's turn it is, leased for an attempt (None: none, or no slot free)."""
        if sum(self._held.values()) >= self.at_once:
            return None
        full = frozenset(key_id for key_id, held in self._held.items() if held >= self.per_key)
        claim = (self.worker, self.timeout_s + LEASE_MARGIN_S, self.retries.attempts, None, full)
        delivery = await asyncio.to_thread(self.outbox.claim, *claim)
        if delivery is not None:
            self._held[delivery.key_id] += 1
        return delivery

    def finished(self, delivery: Delivery) -> None:
        """Its key's slot is free again."""
        self._held[delivery.key_id] -= 1
        if self._held[delivery.key_id] <= 0:
            del self._held[delivery.key_id]

    async def housekeeping(self) -> None:
        """Delete the deliveries past their retention."""
        await asyncio.to_thread(self.outbox.purge)

    async def work(self, delivery: Delivery) -> bool:
        """POST ``delivery`` once (signed now) and record how it went; whether it was delivered."""
        last = False  # no attempt can succeed
        try:
            self.allowed.check(delivery.url)
            signing = await asyncio.to_thread(self.signer.secrets_of, delivery.key_id)
            headers = signed_headers(signing, delivery.id, delivery.body, time.time())
            async with asyncio.timeout(self.timeout_s):
                status = await self._post(delivery.url, delivery.body.encode(), headers)
            delivered, outcome = 200 <= status < 300, f"HTTP {status}"
        except TimeoutError:
            delivered, outcome = False, f"no answer within {self.timeout_s:g} s"
        except httpx.HTTPError as error:
            delivered, outcome = False, f"{type(error).__name__}: {error}"
        except InvalidInput as refused:
            delivered, outcome, last = False, refused.message, True
        retry_at = None if delivered or last else self.retries.retry_at(delivery.attempts, time.time())
        recorded = await asyncio.to_thread(self.outbox.record, delivery.id, self.worker, outcome, delivered, retry_at)
        result = "delivered" if delivered else ("retry" if retry_at is not None else "failed")
        log = logger.info if delivered else logger.warning
        log("webhook %s of %s, attempt %d: %s (%s)", delivery.id, delivery.source, delivery.attempts, outcome, result)
        return delivered and recorded

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body``; the answer's status, its body read no further than :data:`MAX_ANSWER_BYTES`."""
        async with self.client.stream("POST", url, content=body, headers=headers) as response:
            read = 0
            if not response.is_stream_consumed:  # (an in-process transport's answer is read already)
                async for chunk in response.aiter_raw():  # raw: a compressed answer is never inflated
                    read += len(chunk)
                    if read >= MAX_ANSWER_BYTES:
                        break
            return response.status_code

    async def close(self) -> None:
        """Stop looking for deliveries; the attempts under way finish."""
        await super().close()
        await self.client.aclose()
