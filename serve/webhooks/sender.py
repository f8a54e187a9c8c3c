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
import contextlib
import logging
import secrets
import time
from collections import Counter

import httpx

from serve.errors import InvalidInput
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


class WebhookSender:
    """Sends ``outbox``'s deliveries while its replica lives, each signed by ``signer``, where ``allowed`` allows.

    A delivery to a host no longer allowed (the stack restarted with other ``--webhook-hosts``), or of a key with no
    secret, fails at once.
    """

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
        self.outbox, self.signer, self.allowed = outbox, signer, allowed
        self.retries, self.timeout_s, self.at_once, self.per_key = retries, timeout_s, at_once, per_key
        self.worker = f"sender-{secrets.token_hex(6)}"
        self.client = httpx.AsyncClient(transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False)
        self._sending: set[asyncio.Task] = set()
        self._held: Counter[str | None] = Counter()  # the slots each key's attempts hold
        self._loop_task: asyncio.Task | None = None  # held: the event loop keeps only weak references to tasks

    def start(self) -> WebhookSender:
        """Start sending in the running event loop."""
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def _loop(self) -> None:
        housekeeping = 0.0
        while True:
            try:
                await self.send_due()
                if time.monotonic() - housekeeping > HOUSEKEEPING_S:
                    housekeeping = time.monotonic()
                    await asyncio.to_thread(self.outbox.purge)
            except Exception as error:  # noqa: BLE001 - the store may be briefly unreachable; keep trying
                logger.warning("webhook sender: %s: %s", type(error).__name__, error)
            await asyncio.sleep(POLL_S)

    async def send_due(self) -> int:
        """Claim due deliveries while a slot is free and start sending each; how many were started."""
        started = 0
        lease_s = self.timeout_s + LEASE_MARGIN_S
        while len(self._sending) < self.at_once:
            full = frozenset(key_id for key_id, held in self._held.items() if held >= self.per_key)
            claim = (self.worker, lease_s, self.retries.attempts, None, full)
            delivery = await asyncio.to_thread(self.outbox.claim, *claim)
            if delivery is None:
                break
            self._held[delivery.key_id] += 1
            task = asyncio.create_task(self.attempt(delivery))
            self._sending.add(task)
            task.add_done_callback(lambda done, key_id=delivery.key_id: self._done(done, key_id))
            started += 1
        return started

    def _done(self, task: asyncio.Task, key_id: str | None) -> None:
        self._sending.discard(task)
        self._held[key_id] -= 1
        if self._held[key_id] <= 0:
            del self._held[key_id]

    async def attempt(self, delivery: Delivery) -> bool:
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

    async def wait_idle(self) -> None:
        """Wait for the attempts under way (tests, and a replica stopping)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def close(self) -> None:
        """Stop looking for deliveries; the attempts under way finish."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.wait_idle()
        await self.client.aclose()
