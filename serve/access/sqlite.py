"""API keys and their buckets in the stack's SQLite file (one machine)."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Mapping

from serve.access.keys import SLOT_LEASE_S, ApiKey, Bucket, Decision, KeyLimits, KeyStore, utc_day
from serve.stores import serialized, sqlite_connect


def _bucket_take(tokens: float, updated: float, capacity: float, amount: float, now: float) -> tuple[float, bool]:
    """Refill a bucket of ``capacity`` per minute to ``now`` and take ``amount`` if it holds that much."""
    tokens = min(capacity, tokens + (now - updated) * capacity / 60.0)
    if amount <= tokens:
        return tokens - amount, True
    return tokens, False


def _wait_s(tokens: float, capacity: float, amount: float) -> float:
    return (amount - tokens) * 60.0 / capacity


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
            -- taken_at: when the slot was taken or last renewed
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
        return None if row is None else (ApiKey.from_stored(dict(row)), row["digest"])

    @serialized
    def list(self) -> list[ApiKey]:
        """See :meth:`KeyStore.list`."""
        return [ApiKey.from_stored(dict(r)) for r in self.db.execute("SELECT * FROM api_keys ORDER BY created_at, id")]

    @serialized
    def update(self, key_id: str, limits: KeyLimits) -> ApiKey | None:
        """See :meth:`KeyStore.update`."""
        self.db.execute("UPDATE api_keys SET limits = ? WHERE id = ?", (limits.model_dump_json(), key_id))
        found = self._find(key_id)
        return None if found is None else found[0]

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
                decision.buckets[bucket] = Bucket.holding(capacity, tokens)
                if not ok and decision.allowed:
                    decision.allowed, decision.refused_by = False, bucket
                    decision.retry_after_s = _wait_s(tokens, capacity, amount)
            if decision.allowed and limits.requests_per_day is not None:
                row = self.db.execute(
                    "SELECT used FROM key_days WHERE key_id = ? AND day = ?", (key.id, utc_day(now))
                ).fetchone()
                if (row[0] if row else 0) >= limits.requests_per_day:
                    decision.allowed, decision.refused_by = False, "requests_per_day"
                    decision.retry_after_s = 86400 - now % 86400
            if decision.allowed and limits.concurrent is not None:
                self.db.execute("DELETE FROM key_slots WHERE key_id = ? AND taken_at < ?", (key.id, now - SLOT_LEASE_S))
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
                    (key.id, utc_day(now)),
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

    @serialized
    def renew(self, slots: Mapping[str, str]) -> None:
        """See :meth:`KeyStore.renew`."""
        now = self.clock()
        with self.db:
            self.db.executemany(
                "UPDATE key_slots SET taken_at = ? WHERE slot = ? AND taken_at >= ?",
                [(now, slot, now - SLOT_LEASE_S) for slot in slots],
            )

    @serialized
    def in_flight(self, key_id: str) -> int:
        """See :meth:`KeyStore.in_flight`."""
        since = self.clock() - SLOT_LEASE_S
        query = "SELECT COUNT(*) FROM key_slots WHERE key_id = ? AND taken_at >= ?"
        return self.db.execute(query, (key_id, since)).fetchone()[0]
