"""The outbox in the stack's SQLite file: a job's delivery is inserted by the job store's own transaction."""

from __future__ import annotations

import sqlite3
import time

from serve.stores import serialized, sqlite_open
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
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, due_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_source ON webhook_deliveries (source, created_at);
"""
"""The outbox's table: the job store makes it too, as it writes deliveries in its own transactions."""


def add_in(db: sqlite3.Connection, delivery: Delivery) -> None:
    """Insert ``delivery`` with ``db``, inside the caller's transaction (the table: :data:`SCHEMA`)."""
    db.execute(
        "INSERT INTO webhook_deliveries (id, url, body, source, created_at, status, attempts, due_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            delivery.id,
            delivery.url,
            delivery.body,
            delivery.source,
            delivery.created_at,
            delivery.status.value,
            delivery.attempts,
            delivery.due_at,
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
    )


class SqliteOutbox(Outbox):
    """Deliveries in the ``webhook_deliveries`` table of the stack's SQLite file (WAL, every process opens it)."""

    def __init__(self, url: str, retention_s: float = DEFAULT_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.db, self._lock = sqlite_open(url, SCHEMA)

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
    def claim(self, worker: str, lease_s: float, max_attempts: int, now: float | None = None) -> Delivery | None:
        """See :meth:`Outbox.claim`."""
        now = time.time() if now is None else now
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            while True:
                row = self.db.execute(
                    "SELECT * FROM webhook_deliveries WHERE status = 'pending' AND due_at <= ? ORDER BY due_at LIMIT 1",
                    (now,),
                ).fetchone()
                if row is None:
                    return None
                if row["attempts"] < max_attempts:
                    break
                self._finish(row["id"], DeliveryStatus.FAILED, "its sender stopped during its last attempt", now)
            self.db.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, due_at = ?, worker = ? WHERE id = ?",
                (now + lease_s, worker, row["id"]),
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
            return gone.rowcount

    @serialized
    def close(self) -> None:
        """See :meth:`Outbox.close`."""
        self.db.close()
