"""API keys and their limits, kept in the stack's store (SQLite on one machine, Redis across machines).

A key is ``easel-<id>-<secret>``: the id names it in logs, metrics and ``easel keys``; only the secret's SHA-256 is
stored (the secret is 32 random bytes, so a fast hash is enough). Each key has scopes and limits:

- **requests per minute** and **cost per minute** (cost = images x denoising steps x megapixels, as admission counts
  it; a vectorize request costs 0): token buckets that refill continuously, full after a minute;
- **concurrent requests**: at most that many of the key's requests in flight at once;
- **requests per day** (UTC).

Every limit lives in the store, so all Gateway replicas (and all nodes with Redis) draw from the same buckets; a
request checks and takes them in one transaction (SQLite ``BEGIN IMMEDIATE``; a Redis Lua script).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from serve.stores import redis_client, scheme, serialized, sqlite_connect

API_KEY_ENV = "EASEL_API_KEY"
"""The key Easel's own clients (the first request, load tests, benchmarks) send, when set."""
INFLIGHT_TTL_S = 900.0
"""A request slot not given back in this time (its replica died) is dropped."""


class Scope(enum.StrEnum):
    """What a key may do; each route needs one (``serve.access.ROUTE_SCOPES``)."""

    GENERATE = "generate"
    VECTORIZE = "vectorize"
    JOBS = "jobs"
    ADMIN = "admin"


class KeyLimits(BaseModel):
    """A key's limits; None: unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1)
    cost_per_minute: float | None = Field(None, gt=0)
    concurrent: int | None = Field(None, ge=1)
    requests_per_day: int | None = Field(None, ge=1)
    concurrent_jobs: int | None = Field(None, ge=1)  # unfinished (queued or running) background jobs


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


@dataclass(frozen=True)
class Bucket:
    """One limit's state after a request took from it (for the ``x-ratelimit-*`` headers)."""

    limit: float
    remaining: float
    reset_s: float  # seconds until the bucket is full again


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


def _bucket_take(tokens: float, updated: float, capacity: float, amount: float, now: float) -> tuple[float, bool]:
    """Refill a bucket of ``capacity`` per minute to ``now`` and take ``amount`` if it holds that much."""
    tokens = min(capacity, tokens + (now - updated) * capacity / 60.0)
    if amount <= tokens:
        return tokens - amount, True
    return tokens, False


def _reset_s(tokens: float, capacity: float) -> float:
    return (capacity - tokens) * 60.0 / capacity


def _wait_s(tokens: float, capacity: float, amount: float) -> float:
    return (amount - tokens) * 60.0 / capacity


def _day(now: float) -> str:
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


def _record(row: dict) -> ApiKey:
    return ApiKey(
        row["id"],
        row["name"],
        frozenset(Scope(s) for s in json.loads(row["scopes"])),
        KeyLimits.model_validate_json(row["limits"]),
        float(row["created_at"]),
        None if row["revoked_at"] in (None, "") else float(row["revoked_at"]),
    )


class SqliteKeyStore(KeyStore):
    """Keys in the stack's SQLite file."""

    def __init__(self, url: str) -> None:
        self.db = sqlite_connect(url)
        self._lock = threading.RLock()
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL,
                scopes TEXT NOT NULL, limits TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL);
            CREATE TABLE IF NOT EXISTS key_buckets (key_id TEXT NOT NULL, bucket TEXT NOT NULL,
                tokens REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (key_id, bucket));
            CREATE TABLE IF NOT EXISTS key_days (key_id TEXT NOT NULL, day TEXT NOT NULL, used INTEGER NOT NULL,
                PRIMARY KEY (key_id, day));
            CREATE TABLE IF NOT EXISTS key_slots (slot TEXT PRIMARY KEY, key_id TEXT NOT NULL, taken_at REAL NOT NULL);
            """
        )

    @serialized
    def _insert(self, record: ApiKey, stored: str) -> None:
        self.db.execute(
            "INSERT INTO api_keys (id, name, digest, scopes, limits, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.name,
                stored,
                json.dumps(sorted(record.scopes)),
                record.limits.model_dump_json(),
                record.created_at,
            ),
        )

    @serialized
    def _find(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = self.db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else (_record(dict(row)), row["digest"])

    @serialized
    def list(self) -> list[ApiKey]:
        """See :meth:`KeyStore.list`."""
        return [_record(dict(r)) for r in self.db.execute("SELECT * FROM api_keys ORDER BY created_at, id")]

    @serialized
    def revoke(self, key_id: str) -> bool:
        """See :meth:`KeyStore.revoke`."""
        cursor = self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self.clock(), key_id)
        )
        return cursor.rowcount == 1 or self._find(key_id) is not None

    @serialized
    def active(self) -> int:
        """See :meth:`KeyStore.active`."""
        return self.db.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]

    @serialized
    def admit(self, key: ApiKey, cost: float) -> Decision:
        """See :meth:`KeyStore.admit`."""
        now, limits = self.clock(), key.limits
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            decision, updates = Decision(True), {}
            for bucket, capacity, amount in (
                ("requests", limits.requests_per_minute, 1.0),
                ("cost", limits.cost_per_minute, cost),
            ):
                if capacity is None:
                    continue
                row = self.db.execute(
                    "SELECT tokens, updated_at FROM key_buckets WHERE key_id = ? AND bucket = ?", (key.id, bucket)
                ).fetchone()
                tokens, ok = _bucket_take(*(row or (capacity, now)), capacity, amount, now)
                updates[bucket] = tokens
                decision.buckets[bucket] = Bucket(capacity, tokens, _reset_s(tokens, capacity))
                if not ok and decision.allowed:
                    decision.allowed, decision.refused_by = False, bucket
                    decision.retry_after_s = _wait_s(tokens, capacity, amount)
            if decision.allowed and limits.requests_per_day is not None:
                row = self.db.execute(
                    "SELECT used FROM key_days WHERE key_id = ? AND day = ?", (key.id, _day(now))
                ).fetchone()
                if (row[0] if row else 0) >= limits.requests_per_day:
                    decision.allowed, decision.refused_by = False, "requests_per_day"
                    decision.retry_after_s = 86400 - now % 86400
            if decision.allowed and limits.concurrent is not None:
                self.db.execute(
                    "DELETE FROM key_slots WHERE key_id = ? AND taken_at < ?", (key.id, now - INFLIGHT_TTL_S)
                )
                held = self.db.execute("SELECT COUNT(*) FROM key_slots WHERE key_id = ?", (key.id,)).fetchone()[0]
                if held >= limits.concurrent:
                    decision.allowed, decision.refused_by, decision.retry_after_s = False, "concurrent", 1.0
            if not decision.allowed:
                return decision
            for bucket, tokens in updates.items():
                self.db.execute(
                    "INSERT OR REPLACE INTO key_buckets (key_id, bucket, tokens, updated_at) VALUES (?, ?, ?, ?)",
                    (key.id, bucket, tokens, now),
                )
            if limits.requests_per_day is not None:
                self.db.execute(
                    "INSERT INTO key_days (key_id, day, used) VALUES (?, ?, 1) "
                    "ON CONFLICT (key_id, day) DO UPDATE SET used = used + 1",
                    (key.id, _day(now)),
                )
            if limits.concurrent is not None:
                decision.slot = secrets.token_hex(8)
                self.db.execute(
                    "INSERT INTO key_slots (slot, key_id, taken_at) VALUES (?, ?, ?)", (decision.slot, key.id, now)
                )
            return decision

    @serialized
    def release(self, key: ApiKey, slot: str) -> None:
        """See :meth:`KeyStore.release`."""
        self.db.execute("DELETE FROM key_slots WHERE slot = ?", (slot,))


_KEY = "easel:key:"  # hash per key
_KEYS = "easel:keys"  # zset: key id by creation time
_BUCKET = "easel:key-bucket:"  # hash per key and bucket: tokens, updated_at
_DAY = "easel:key-day:"  # counter per key and UTC day
_SLOTS = "easel:key-slots:"  # zset per key: slot by time taken

# KEYS: requests bucket, cost bucket, day counter, slots. ARGV: now, rpm, cost/min, cost, per day, concurrent,
# slot, ttl, day seconds left (empty string: no such limit). Returns [allowed, refused_by, retry_after, req tokens,
# cost tokens] (as strings).
_ADMIT = """
local now = tonumber(ARGV[1])
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local amounts = {1, tonumber(ARGV[4])}
local names = {'requests', 'cost'}
local tokens = {'', ''}
local refused, wait = '', 0
for i = 1, 2 do
  local cap = caps[i]
  if cap then
    local state = redis.call('HMGET', KEYS[i], 'tokens', 'updated_at')
    local t = tonumber(state[1]) or cap
    local updated = tonumber(state[2]) or now
    t = math.min(cap, t + (now - updated) * cap / 60)
    if amounts[i] <= t then
      t = t - amounts[i]
    elseif refused == '' then
      refused = names[i]
      wait = (amounts[i] - t) * 60 / cap
    end
    tokens[i] = t
  end
end
local per_day = tonumber(ARGV[5])
if refused == '' and per_day and (tonumber(redis.call('GET', KEYS[3])) or 0) >= per_day then
  refused = 'requests_per_day'
  wait = tonumber(ARGV[9])
end
local concurrent = tonumber(ARGV[6])
if refused == '' and concurrent then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[8]))
  if redis.call('ZCARD', KEYS[4]) >= concurrent then
    refused = 'concurrent'
    wait = 1
  end
end
if refused ~= '' then
  return {0, refused, tostring(wait), tostring(tokens[1]), tostring(tokens[2])}
end
for i = 1, 2 do
  if caps[i] then
    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i]), 'updated_at', tostring(now))
    redis.call('EXPIRE', KEYS[i], 120)
  end
end
if per_day then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 172800)
end
if concurrent then
  redis.call('ZADD', KEYS[4], now, ARGV[7])
end
return {1, '', '0', tostring(tokens[1]), tostring(tokens[2])}
"""


class RedisKeyStore(KeyStore):
    """Keys in Redis (a stack across machines)."""

    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)
        self._admit = self.redis.register_script(_ADMIT)

    def _insert(self, record: ApiKey, stored: str) -> None:
        fields = {
            "id": record.id,
            "name": record.name,
            "digest": stored,
            "scopes": json.dumps(sorted(record.scopes)),
            "limits": record.limits.model_dump_json(),
            "created_at": repr(record.created_at),
            "revoked_at": "",
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(_KEY + record.id, mapping=fields).zadd(_KEYS, {record.id: record.created_at}).execute()

    def _find(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = self.redis.hgetall(_KEY + key_id)
        return (_record(row), row["digest"]) if row else None

    def list(self) -> list[ApiKey]:
        """See :meth:`KeyStore.list`."""
        return [found[0] for key_id in self.redis.zrange(_KEYS, 0, -1) if (found := self._find(key_id))]

    def revoke(self, key_id: str) -> bool:
        """See :meth:`KeyStore.revoke`."""
        found = self._find(key_id)
        if found is None:
            return False
        if found[0].revoked_at is None:
            self.redis.hset(_KEY + key_id, "revoked_at", repr(self.clock()))
        return True

    def active(self) -> int:
        """See :meth:`KeyStore.active`."""
        return sum(k.revoked_at is None for k in self.list())

    def admit(self, key: ApiKey, cost: float) -> Decision:
        """See :meth:`KeyStore.admit`."""
        now, limits = self.clock(), key.limits
        slot = secrets.token_hex(8)

        def arg(value) -> str:
            return "" if value is None else repr(value)

        allowed, refused, wait, req_tokens, cost_tokens = self._admit(
            keys=[
                _BUCKET + key.id + ":requests",
                _BUCKET + key.id + ":cost",
                _DAY + key.id + ":" + _day(now),
                _SLOTS + key.id,
            ],
            args=[
                repr(now),
                arg(limits.requests_per_minute),
                arg(limits.cost_per_minute),
                repr(float(cost)),
                arg(limits.requests_per_day),
                arg(limits.concurrent),
                slot,
                repr(INFLIGHT_TTL_S),
                repr(86400 - now % 86400),
            ],
        )
        decision = Decision(bool(int(allowed)), refused_by=refused or None, retry_after_s=float(wait))
        for name, capacity, tokens in (
            ("requests", limits.requests_per_minute, req_tokens),
            ("cost", limits.cost_per_minute, cost_tokens),
        ):
            if capacity is not None:
                left = float(tokens)
                decision.buckets[name] = Bucket(capacity, left, _reset_s(left, capacity))
        if decision.allowed and limits.concurrent is not None:
            decision.slot = slot
        return decision

    def release(self, key: ApiKey, slot: str) -> None:
        """See :meth:`KeyStore.release`."""
        self.redis.zrem(_SLOTS + key.id, slot)


def open_key_store(url: str) -> KeyStore:
    """The key store at ``url``."""
    if scheme(url) == "sqlite":
        return SqliteKeyStore(url)
    return RedisKeyStore(url)
