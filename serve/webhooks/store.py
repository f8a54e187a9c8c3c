"""The outbox's contract: webhook deliveries recorded, leased by one sender at a time, their attempts recorded.

A delivery is written by whatever ends what it tells of, in that change's own transaction (a job's end:
:mod:`serve.jobs`, through :func:`serve.webhooks.sqlite.add_in` or :func:`serve.webhooks.redis.add_in`), so a job
never ends without its delivery recorded. A sender (:class:`serve.webhooks.sender.WebhookSender`) claims a due
delivery with a lease, POSTs it and records the attempt: delivered, due again later, or failed past its attempts. A
delivery is due at its next attempt's time or, while leased, when its lease expires: a sender that dies mid-delivery
leaves it due again, and the next sender sends it again under the same id. Claims take keys in turn: each delivery
carries the API key whose job it tells of, and a claim takes the due delivery of the key served least recently (so
one key's many deliveries never queue another's behind them). Two implementations keep the contract, tested against
the same tests: :mod:`serve.webhooks.sqlite` and :mod:`serve.webhooks.redis`.
"""

from __future__ import annotations

import enum
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

DEFAULT_RETENTION_S = 24 * 3600.0
"""Deliveries done (delivered or failed) are kept this long, as finished jobs are."""
MAX_OUTCOME_CHARS = 300


class DeliveryStatus(enum.StrEnum):
    """A delivery's state: ``pending`` until a receiver answered 2xx (``delivered``) or its attempts ran out."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    """One webhook call: its id (the ``webhook-id`` header, the same on every attempt), where, and the body."""

    id: str
    url: str
    body: str  # the JSON POSTed: the same bytes on every attempt
    source: str  # what it tells of (a job's id)
    created_at: float
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0  # attempts begun (a claim begins one)
    due_at: float = 0.0  # when it may be claimed: its next attempt, or its lease's end while one is sending it
    outcome: str | None = None  # the last attempt's: "HTTP 200", "HTTP 500", "timed out after 10 s", ...
    finished_at: float | None = None
    key_id: str | None = None  # the API key whose job it tells of (None: the API was open); signed with its secret

    def to_api(self) -> dict:
        """The delivery as ``easel webhooks deliveries`` shows it (its body left out)."""
        return {
            "id": self.id,
            "url": self.url,
            "source": self.source,
            "key_id": self.key_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "outcome": self.outcome,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


def new_delivery(url: str, body: str, source: str, key_id: str | None = None) -> Delivery:
    """A fresh delivery of ``key_id``'s, due now (``msg_`` and 24 hex digits, as Standard Webhooks names them)."""
    now = time.time()
    return Delivery(f"msg_{secrets.token_hex(12)}", url, body, source, now, due_at=now, key_id=key_id)


def clipped(outcome: str) -> str:
    """An attempt's outcome as recorded (at most :data:`MAX_OUTCOME_CHARS`)."""
    return outcome[:MAX_OUTCOME_CHARS]


class Outbox(ABC):
    """Webhook deliveries in the stack's store."""

    def __init__(self, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.retention_s = retention_s

    @abstractmethod
    def add(self, delivery: Delivery) -> None:
        """Record ``delivery`` on its own (a job's is recorded in the transaction that ends the job)."""

    @abstractmethod
    def get(self, delivery_id: str) -> Delivery | None:
        """The delivery, or None."""

    @abstractmethod
    def of_source(self, source: str) -> list[Delivery]:
        """The deliveries that tell of ``source`` (a job's id), oldest first."""

    def claim(
        self,
        worker: str,
        lease_s: float,
        max_attempts: int,
        now: float | None = None,
        skip: frozenset[str | None] = frozenset(),
    ) -> Delivery | None:
        """Lease a due delivery to ``worker`` for ``lease_s``, its attempt begun (counted); None if none is due.

        Of the keys with a due delivery (but those in ``skip``: their share of the sender's slots is taken), the key
        served least recently; of its deliveries, the one due first. A due delivery whose ``max_attempts`` have all
        begun (its sender died during the last) fails instead.
        """
        return self._claim(worker, lease_s, max_attempts, time.time() if now is None else now, {k or "" for k in skip})

    @abstractmethod
    def _claim(self, worker: str, lease_s: float, max_attempts: int, now: float, skipped: set[str]) -> Delivery | None:
        """:meth:`claim` at ``now``, the keys of ``skip`` as strings (a key's absence as "")."""

    @abstractmethod
    def record(self, delivery_id: str, worker: str, outcome: str, delivered: bool, retry_at: float | None) -> bool:
        """Record ``worker``'s attempt: delivered, due again at ``retry_at``, or failed (``retry_at`` None).

        Returns False (nothing recorded) when ``worker`` no longer holds the delivery: its lease ran out and another
        sender claimed it.
        """

    @abstractmethod
    def purge(self, now: float | None = None) -> int:
        """Delete deliveries done longer than the retention ago; how many."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""
