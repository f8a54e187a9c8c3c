"""The webhook sender: claims the outbox's due deliveries and POSTs each, signed, its attempt recorded.

Each Gateway replica runs one (:class:`WebhookSender`), beside its job runner. It looks for due deliveries every
:data:`POLL_S`, sends up to ``at_once`` at a time, each attempt bounded by ``timeout_s`` all told (connecting,
sending, waiting, reading), and leases each for that and a margin: a sender that dies mid-delivery leaves it due
again when the lease ends, and the next sender sends it again, under the same id. A 2xx answer delivers it; any
other answer (a redirect too: none is followed), a timeout or a broken connection is a failed attempt, made again
at :class:`~serve.webhooks.settings.RetryTimes`' times until its attempts run out. A receiver that never answers so
costs one slot for ``timeout_s`` per attempt, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import httpx

from serve.errors import InvalidInput
from serve.webhooks.settings import DEFAULT_TIMEOUT_S, RetryTimes, WebhookSettings
from serve.webhooks.signing import signed_headers
from serve.webhooks.store import Delivery, Outbox

logger = logging.getLogger(__name__)

POLL_S = 0.5
HOUSEKEEPING_S = 60.0
LEASE_MARGIN_S = 5.0
"""A delivery's lease beyond its attempt's timeout (the attempt's record written meanwhile)."""


class WebhookSender:
    """Sends ``outbox``'s deliveries signed with ``secret`` while its replica lives, to the hosts ``allowed`` names.

    A delivery to a host no longer allowed (the stack restarted with other ``--webhook-hosts``) fails at once.
    """

    def __init__(
        self,
        outbox: Outbox,
        secret: bytes,
        allowed: WebhookSettings,
        retries: RetryTimes = RetryTimes(),  # noqa: B008 - frozen
        timeout_s: float = DEFAULT_TIMEOUT_S,
        at_once: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.outbox, self.secret, self.allowed = outbox, secret, allowed
        self.retries, self.timeout_s, self.at_once = retries, timeout_s, at_once
        self.worker = f"sender-{secrets.token_hex(6)}"
        self.client = httpx.AsyncClient(transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False)
        self._sending: set[asyncio.Task] = set()
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
            claim = (self.worker, lease_s, self.retries.attempts)
            delivery = await asyncio.to_thread(self.outbox.claim, *claim)
            if delivery is None:
                break
            task = asyncio.create_task(self.attempt(delivery))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
            started += 1
        return started

    async def attempt(self, delivery: Delivery) -> bool:
        """POST ``delivery`` once (signed now) and record how it went; whether it was delivered."""
        headers = signed_headers(self.secret, delivery.id, delivery.body, time.time())
        last = False  # no attempt can succeed
        try:
            self.allowed.check(delivery.url)
            async with asyncio.timeout(self.timeout_s):
                response = await self.client.post(delivery.url, content=delivery.body.encode(), headers=headers)
            delivered, outcome = response.is_success, f"HTTP {response.status_code}"
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
