"""API keys and their limits, and the contract of the store that keeps them (:class:`KeyStore`).

A key is ``easel-<id>-<secret>``: the id names it in logs, metrics and ``easel keys``; only the secret's SHA-256 is
stored (the secret is 32 random bytes, so a fast hash is enough). Each key has scopes and limits:

- **requests per minute** and **cost per minute** (cost = images x megapixels x engine passes + input megapixels,
  as admission counts it: :class:`serve.models.admission.Work`; a vectorize request costs 0): token buckets
  that refill continuously, full after a minute;
- **concurrent requests**: at most that many of the key's requests in flight at once (a slot each, held while the
  request lives: its replica renews it, and one not renewed for ``SLOT_LEASE_S`` is dropped);
- **requests per day** (UTC);
- **quotas** on what it keeps (images, references, LoRAs, jobs: :data:`serve.stores.QUOTA_KINDS`), each the stack's
  default unless the key has its own (``easel keys update``).

Every limit lives in the store, so all Gateway replicas (and all nodes with Redis) draw from the same buckets; a
request checks and takes them in one transaction (SQLite ``BEGIN IMMEDIATE``; a Redis Lua script). The two stores are
:mod:`serve.access.sqlite` and :mod:`serve.access.redis`; :func:`serve.access.open_key_store` picks one by URL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ConfigDict, Field

from serve.moderation import Policy
from serve.routes import Scope
from serve.stores import Quotas

API_KEY_ENV = "EASEL_API_KEY"
"""The key Easel's own clients (the first request, load tests, benchmarks) send, when set."""
SLOT_LEASE_S = 10.0
"""A concurrency slot not renewed for this long (its replica died) is dropped; replicas renew theirs in seconds."""


class KeyLimits(Quotas):
    """A key's limits (None: unlimited), its own quotas and its own moderation policy (None: the stack's).

    Its quotas are :class:`~serve.stores.Quotas`' fields (None: the stack's quota).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1)
    cost_per_minute: float | None = Field(None, gt=0)
    concurrent: int | None = Field(None, ge=1)
    requests_per_day: int | None = Field(None, ge=1)
    moderation: Policy | None = None  # the key's own moderation policy, over the stack's (easel up --moderation)


@dataclass(frozen=True)
class ApiKey:
    """A key as stored (never its secret)."""

    id: str
    name: str
    scopes: frozenset[Scope]
    limits: KeyLimits
    created_at: float
    revoked_at: float | None = None

    def to_api(self) -> dict:
        """The key as ``easel keys list`` shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "limits": self.limits.model_dump(exclude_none=True),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_stored(cls, row: Mapping[str, str | float | None]) -> ApiKey:
        """A key from its stored fields (a SQLite row or a Redis hash)."""
        return cls(
            row["id"],
            row["name"],
            frozenset(Scope(s) for s in json.loads(row["scopes"])),
            KeyLimits.model_validate_json(row["limits"]),
            float(row["created_at"]),
            None if row["revoked_at"] in (None, "") else float(row["revoked_at"]),
        )


@dataclass(frozen=True)
class Bucket:
    """One limit's state after a request took from it (for the ``x-ratelimit-*`` headers)."""

    limit: float
    remaining: float
    reset_s: float  # seconds until the bucket is full again

    @classmethod
    def holding(cls, limit: float, tokens: float) -> Bucket:
        """A bucket of ``limit`` per minute that holds ``tokens`` now."""
        return cls(limit, tokens, (limit - tokens) * 60.0 / limit)


@dataclass
class Decision:
    """Whether a request may run under its key's limits, and each bucket's state."""

    allowed: bool
    buckets: dict[str, Bucket] = field(default_factory=dict)  # "requests", "cost"
    refused_by: str | None = None  # the limit that refused it
    retry_after_s: float = 0.0
    slot: str | None = None  # the concurrency slot to give back


def client_headers() -> dict[str, str]:
    """``Authorization`` for Easel's own clients: the key in ``$EASEL_API_KEY``, if any."""
    key = os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def new_secret() -> tuple[str, str]:
    """A fresh key id and the full key."""
    key_id = secrets.token_hex(6)
    return key_id, f"easel-{key_id}-{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id inside a key, or None if it is not shaped like one."""
    parts = key.split("-", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "easel" and parts[1] else None


def digest(key: str) -> str:
    """What is stored of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def utc_day(now: float) -> str:
    """The UTC day of ``now`` (what a daily quota counts)."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class KeyStore(ABC):
    """Keys and their buckets. ``clock`` is injectable for tests."""

    clock = staticmethod(time.time)

    def create(self, name: str, scopes: set[Scope], limits: KeyLimits) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once)."""
        key_id, key = new_secret()
        record = ApiKey(key_id, name, frozenset(scopes), limits, self.clock())
        self._insert(record, digest(key))
        return record, key

    def verify(self, key: str) -> ApiKey | None:
        """The live key ``key`` is, or None (unknown, wrong secret or revoked)."""
        key_id = key_id_of(key)
        found = self._find(key_id) if key_id else None
        if found is None:
            return None
        record, stored = found
        if record.revoked_at is not None or not hmac.compare_digest(stored, digest(key)):
            return None
        return record

    def get(self, key_id: str) -> ApiKey | None:
        """The key with id ``key_id`` (revoked or not)."""
        found = self._find(key_id)
        return None if found is None else found[0]

    @abstractmethod
    def _insert(self, record: ApiKey, stored: str) -> None: ...

    @abstractmethod
    def _find(self, key_id: str) -> tuple[ApiKey, str] | None: ...

    @abstractmethod
    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""

    @abstractmethod
    def update(self, key_id: str, limits: KeyLimits) -> ApiKey | None:
        """Give a key new limits (its requests from the next on); the key as updated, None if there is no such key."""

    @abstractmethod
    def revoke(self, key_id: str) -> bool:
        """Revoke a key at once; False if there is no such key."""

    @abstractmethod
    def active(self) -> int:
        """How many keys are not revoked (none: the API is open)."""

    @abstractmethod
    def admit(self, key: ApiKey, cost: float) -> Decision:
        """Take one request and ``cost`` from the key's buckets, its daily quota and a concurrency slot, all or none."""

    @abstractmethod
    def release(self, key: ApiKey, slot: str) -> None:
        """Give back a concurrency slot."""

    @abstractmethod
    def renew(self, slots: Mapping[str, str]) -> None:
        """Renew the leases of held slots (``slots``: slot -> its key's id); a slot given back stays given back."""

    @abstractmethod
    def in_flight(self, key_id: str) -> int:
        """How many concurrency slots the key holds now (its requests in flight)."""
