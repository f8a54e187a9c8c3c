"""The outbox and the keys' webhook secrets in the stack's SQLite file.

A job's delivery is inserted by the job store's own transaction.
"""

from __future__ import annotations

import sqlite3
import time

from serve.stores import serialized, sqlite_open
from serve.webhooks.key_secrets import KeySecret, KeySecrets
from serve.webhooks.store import DEFAULT_RETENTION_S, Delivery, DeliveryStatus, Outbox, clipped

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    worker TEXT,
    outcome TEXT,
    finished_at REAL,
    key_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, due_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_source ON webhook_deliveries (source, created_at);
-- each key's last turn: a claim serves the key with the lowest first ('' : deliveries of an open API's jobs)
CREATE TABLE IF NOT EXISTS webhook_turns (key_id TEXT PRIMARY KEY, turn INTEGER NOT NULL);
"""
"""The outbox's tables: the job store makes them too, as it writes deliveries in its own transactions."""


def upgrade(db: sqlite3.Connection) -> None:
    """Add what an older stack's outbox table lacks (its deliveries' key: an open API's, '')."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(webhook_deliveries)")}
    if "key_id" not in columns:
        db.execute("ALTER TABLE webhook_deliveries ADD COLUMN key_id TEXT NOT NULL DEFAULT ''")


def add_in(db: sqlite3.Connection, delivery: Delivery) -> None:
    """Insert ``delivery`` with ``db``, inside the caller's transaction (the table: :data:`SCHEMA`)."""
    db.execute(
        "INSERT INTO webhook_deliveries (id, url, body, source, created_at, status, attempts, due_at, key_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            delivery.id,
            delivery.url,
            delivery.body,
            delivery.source,
            delivery.created_at,
            delivery.status.value,
            delivery.attempts,
            delivery.due_at,
            delivery.key_id or "",
        ),
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        url=row["url"],
        body=row["body"],
        source=row["source"],
        created_at=row["created_at"],
        status=DeliveryStatus(row["status"]),
        attempts=row["attempts"],
        due_at=row["due_at"],
        outcome=row["outcome"],
        finished_at=row["finished_at"],
        key_id=row["key_id"] or None,
    )


class SqliteOutbox(Outbox):
    """Deliveries in the ``webhook_deliveries`` table of the stack's SQLite file (WAL, every process opens it)."""

    def __init__(self, url: str, retention_s: float = DEFAULT_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.db, self._lock = sqlite_open(url, SCHEMA)
        upgrade(self.db)

    @serialized
    def add(self, delivery: Delivery) -> None:
        """See :meth:`Outbox.add`."""
        with self.db:
            add_in(self.db, delivery)

    @serialized
    def get(self, delivery_id: str) -> Delivery | None:
        """See :meth:`Outbox.get`."""
        row = self.db.execute("SELECT * FROM webhook_deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return None if row is None else _delivery(row)

    @serialized
    def of_source(self, source: str) -> list[Delivery]:
        """See :meth:`Outbox.of_source`."""
        rows = self.db.execute(
            "SELECT * FROM webhook_deliveries WHERE source = ? ORDER BY created_at, id", (source,)
        ).fetchall()
        return [_delivery(row) for row in rows]

    @serialized
    def _claim(self, worker: str, lease_s: float, max_attempts: int, now: float, skipped: set[str]) -> Delivery | None:
        """See :meth:`Outbox._claim`."""
        query = (
            "SELECT d.* FROM webhook_deliveries d LEFT JOIN webhook_turns t ON t.key_id = d.key_id "
            f"WHERE d.status = 'pending' AND d.due_at <= ? AND d.key_id NOT IN ({', '.join('?' * len(skipped))}) "
            "ORDER BY COALESCE(t.turn, 0), d.due_at LIMIT 1"
        )
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            while True:
                row = self.db.execute(query, (now, *skipped)).fetchone()
                if row is None:
                    return None
                if row["attempts"] < max_attempts:
                    break
                self._finish(row["id"], DeliveryStatus.FAILED, "its sender stopped during its last attempt", now)
            self.db.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, due_at = ?, worker = ? WHERE id = ?",
                (now + lease_s, worker, row["id"]),
            )
            self.db.execute(
                "INSERT INTO webhook_turns (key_id, turn) "
                "VALUES (?, (SELECT COALESCE(MAX(turn), 0) + 1 FROM webhook_turns)) "
                "ON CONFLICT (key_id) DO UPDATE SET turn = excluded.turn",
                (row["key_id"],),
            )
            return _delivery(self.db.execute("SELECT * FROM webhook_deliveries WHERE id = ?", (row["id"],)).fetchone())

    def _finish(self, delivery_id: str, status: DeliveryStatus, outcome: str, now: float) -> None:
        self.db.execute(
            "UPDATE webhook_deliveries SET status = ?, outcome = ?, finished_at = ?, worker = NULL WHERE id = ?",
            (status.value, clipped(outcome), now, delivery_id),
        )

    @serialized
    def record(self, delivery_id: str, worker: str, outcome: str, delivered: bool, retry_at: float | None) -> bool:
        """See :meth:`Outbox.record`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            held = self.db.execute(
                "SELECT 1 FROM webhook_deliveries WHERE id = ? AND worker = ? AND status = 'pending'",
                (delivery_id, worker),
            ).fetchone()
            if held is None:
                return False
            if delivered or retry_at is None:
                status = DeliveryStatus.DELIVERED if delivered else DeliveryStatus.FAILED
                self._finish(delivery_id, status, outcome, time.time())
            else:
                self.db.execute(
                    "UPDATE webhook_deliveries SET due_at = ?, outcome = ?, worker = NULL WHERE id = ?",
                    (retry_at, clipped(outcome), delivery_id),
                )
            return True

    @serialized
    def purge(self, now: float | None = None) -> int:
        """See :meth:`Outbox.purge`."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self.db:
            gone = self.db.execute(
                "DELETE FROM webhook_deliveries WHERE status != 'pending' AND finished_at < ?", (cutoff,)
            )
            self.db.execute(  # the turns of keys with nothing pending: a key back later starts first
                "DELETE FROM webhook_turns WHERE key_id NOT IN "
                "(SELECT key_id FROM webhook_deliveries WHERE status = 'pending')"
            )
            return gone.rowcount

    @serialized
    def close(self) -> None:
        """See :meth:`Outbox.close`."""
        self.db.close()


class SqliteKeySecrets(KeySecrets):
    """The keys' webhook secrets in the ``webhook_secrets`` table of the stack's SQLite file."""

    def __init__(self, url: str) -> None:
        self.db, self._lock = sqlite_open(
            url,
            "CREATE TABLE IF NOT EXISTS webhook_secrets (key_id TEXT PRIMARY KEY, secret TEXT NOT NULL, "
            "previous TEXT, previous_until REAL NOT NULL DEFAULT 0);",
        )

    @serialized
    def _rotate(self, key_id: str, secret: bytes, previous_until: float) -> None:
        with self.db:  # one statement: the old secret moves to previous as the new one replaces it
            self.db.execute(
                "INSERT INTO webhook_secrets (key_id, secret) VALUES (?, ?) ON CONFLICT (key_id) DO UPDATE "
                "SET previous = secret, previous_until = ?, secret = excluded.secret",
                (key_id, secret.hex(), previous_until),
            )

    @serialized
    def _get(self, key_id: str) -> KeySecret | None:
        row = self.db.execute("SELECT * FROM webhook_secrets WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            return None
        previous = bytes.fromhex(row["previous"]) if row["previous"] else None
        return KeySecret(bytes.fromhex(row["secret"]), previous, row["previous_until"])

    @serialized
    def close(self) -> None:
        """See :meth:`KeySecrets.close`."""
        self.db.close()
