"""The job store in one SQLite file (WAL): every process of one machine's stack opens the same file."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable

from serve.errors import Conflict, NotFound
from serve.jobs.model import (
    DEFAULT_RETENTION_S,
    MAX_ATTEMPTS,
    Event,
    EventType,
    Job,
    JobStatus,
    Owner,
    Progress,
    Stage,
)
from serve.jobs.store import (
    JobStore,
    LeaseLost,
    attempts_exhausted,
    final_event,
    progress_data,
    webhook_delivery,
)
from serve.priority import Priority
from serve.stores import serialized, sqlite_open
from serve.webhooks import sqlite as outbox

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT 'denoise',
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    result TEXT,
    error TEXT,
    seq INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    failures TEXT
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, priority, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    job_id TEXT NOT NULL
);
"""
_SCHEMA_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, status);
"""


class SqliteJobStore(JobStore):
    """Jobs in one SQLite file (WAL): every process of one machine's stack opens the same file."""

    def __init__(self, url: str, retention_s: float = DEFAULT_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.db, self._lock = sqlite_open(url, _SCHEMA + outbox.SCHEMA)  # a job's end writes its webhook's delivery
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for column in ("owner", "failures"):  # a store made before jobs had owners, or kept their failed attempts
            if column not in columns:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        if "stage" not in columns:  # made before a video's interpolation was a stage of its progress
            self.db.execute("ALTER TABLE jobs ADD COLUMN stage TEXT NOT NULL DEFAULT 'denoise'")
        outbox.upgrade(self.db)
        self.db.executescript(_SCHEMA_INDEXES)

    def _job(self, row) -> Job:
        return Job(
            id=row["id"],
            status=JobStatus(row["status"]),
            priority=list(Priority)[row["priority"]],
            request=json.loads(row["request"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            step=row["step"],
            total=row["total"],
            stage=Stage(row["stage"]),
            attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]),
            result=json.loads(row["result"]) if row["result"] else None,
            error=json.loads(row["error"]) if row["error"] else None,
            owner=row["owner"],
            failures=tuple(json.loads(row["failures"])) if row["failures"] else (),
            seq=row["seq"],
        )

    def _append(self, job_id: str, type_: EventType, data: dict) -> None:
        """Append an event (inside the caller's transaction)."""
        seq = self.db.execute("UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING seq", (job_id,)).fetchone()[0]
        self.db.execute(
            "INSERT INTO job_events (job_id, seq, type, data) VALUES (?, ?, ?, ?)",
            (job_id, seq, type_.value, json.dumps(data)),
        )

    @serialized
    def _atomically(self, change: Callable, idempotency: tuple[str, str] | None, owner: Owner | None):
        """See :meth:`JobStore._atomically`: under the store's lock, in an immediate (write-locked) transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            return change(self.db)

    def _idempotency_record(self, tx, key: str) -> tuple[str, str] | None:
        """See :meth:`JobStore._idempotency_record`."""
        row = tx.execute("SELECT body_hash, job_id FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row["body_hash"], row["job_id"])

    def _exists(self, tx, job_id: str) -> bool:
        """See :meth:`JobStore._exists`."""
        return tx.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def _unfinished(self, tx, key_id: str) -> int:
        """See :meth:`JobStore._unfinished`."""
        return tx.execute(
            "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ('queued', 'running')", (key_id,)
        ).fetchone()[0]

    def _add(self, tx, job_id: str, request: dict, priority: Priority, owner: Owner | None) -> None:
        """See :meth:`JobStore._add`."""
        tx.execute(
            "INSERT INTO jobs (id, status, priority, request, created_at, owner) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, JobStatus.QUEUED.value, priority.rank, json.dumps(request), time.time(), owner and owner.key_id),
        )

    def _record_idempotency(self, tx, idempotency: tuple[str, str], job_id: str) -> None:
        """See :meth:`JobStore._record_idempotency`."""
        tx.execute(
            "INSERT OR REPLACE INTO idempotency_keys (key, body_hash, job_id) VALUES (?, ?, ?)", (*idempotency, job_id)
        )

    @serialized
    def get(self, job_id: str) -> Job | None:
        """See :meth:`JobStore.get`."""
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    @serialized
    def list(
        self, status: JobStatus | None = None, limit: int = 20, after: str | None = None, owner: str | None = None
    ) -> list[Job]:
        """See :meth:`JobStore.list`."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if after is not None:  # another owner's job is as unknown as a missing one
            anchor = self.db.execute(
                "SELECT created_at FROM jobs WHERE id = ? AND (? IS NULL OR owner = ?)", (after, owner, owner)
            ).fetchone()
            if anchor is None:
                raise NotFound(f"after: no job {after!r}", "after")
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [anchor[0], anchor[0], after]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, id DESC LIMIT ?",  # noqa: S608 - fixed clauses
            (*args, limit),
        ).fetchall()
        return [self._job(row) for row in rows]

    @serialized
    def claim(self, worker: str, lease_s: float, priorities: tuple[Priority, ...] = tuple(Priority)) -> Job | None:
        """See :meth:`JobStore.claim`."""
        ranks = [p.rank for p in priorities]
        marks = ",".join("?" * len(ranks))
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            while ranks:
                row = self.db.execute(
                    f"SELECT * FROM jobs WHERE priority IN ({marks}) AND (status = 'queued' OR "  # noqa: S608
                    "(status = 'running' AND lease_until < ?)) ORDER BY priority, created_at, id LIMIT 1",
                    (*ranks, now),
                ).fetchone()
                if row is None:
                    return None
                job = self._job(row)
                if job.status is JobStatus.QUEUED or not (job.cancel_requested or job.attempts >= MAX_ATTEMPTS):
                    break
                # Its worker died: a cancel asked meanwhile ends it, as do too many deaths.
                error = None if job.cancel_requested else attempts_exhausted(job.id)
                self._end(job.id, JobStatus.CANCELED if job.cancel_requested else JobStatus.FAILED, None, error)
            else:
                return None
            self.db.execute(
                "UPDATE jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), step = 0, stage = 'denoise' WHERE id = ?",
                (worker, now + lease_s, now, job.id),
            )
            self._append(job.id, EventType.RUNNING, {"attempt": job.attempts + 1})
            return self._job(self.db.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone())

    def _owned(self, job_id: str, worker: str) -> sqlite3.Row:
        row = self.db.execute(
            "SELECT cancel_requested FROM jobs WHERE id = ? AND worker = ? AND status = 'running'", (job_id, worker)
        ).fetchone()
        if row is None:
            raise LeaseLost(job_id)
        return row

    @serialized
    def progress(self, job_id: str, worker: str, lease_s: float, progress: Progress) -> bool:
        """See :meth:`JobStore.progress`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self._owned(job_id, worker)
            self.db.execute(
                "UPDATE jobs SET step = ?, total = ?, stage = ?, lease_until = ? WHERE id = ?",
                (progress.step, progress.total, progress.stage.value, time.time() + lease_s, job_id),
            )
            data = progress_data(progress)
            self._append(job_id, EventType.PROGRESS, data)
            return bool(row["cancel_requested"])

    @serialized
    def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """See :meth:`JobStore.heartbeat`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self._owned(job_id, worker)
            self.db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (time.time() + lease_s, job_id))
            return bool(row["cancel_requested"])

    @serialized
    def failed_attempt(self, job_id: str, worker: str, lease_s: float, record: dict) -> bool:
        """See :meth:`JobStore.failed_attempt`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self._owned(job_id, worker)
            self.db.execute(
                "UPDATE jobs SET failures = json_insert(COALESCE(failures, '[]'), '$[#]', json(?)), lease_until = ? "
                "WHERE id = ?",
                (json.dumps(record), time.time() + lease_s, job_id),
            )
            self._append(job_id, EventType.ATTEMPT_FAILED, record)
            return bool(row["cancel_requested"])

    def _end(self, job_id: str, status: JobStatus, result: dict | None, error: dict | None) -> None:
        self.db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ?, worker = NULL, lease_until = NULL "
            "WHERE id = ?",
            (
                status.value,
                time.time(),
                json.dumps(result) if result else None,
                json.dumps(error) if error else None,
                job_id,
            ),
        )
        self._append(job_id, *final_event(status, result, error))
        ended = self._job(self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
        if (delivery := webhook_delivery(ended)) is not None:
            outbox.add_in(self.db, delivery)

    @serialized
    def finish(self, job_id: str, worker: str, status: JobStatus, result: dict | None, error: dict | None) -> None:
        """See :meth:`JobStore.finish`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._owned(job_id, worker)
            self._end(job_id, status, result, error)

    @serialized
    def cancel(self, job_id: str) -> Job:
        """See :meth:`JobStore.cancel`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            job = self.require(job_id)
            if job.status.final:
                raise Conflict(f"job {job_id} is already {job.status.value}", "id")
            if job.status is JobStatus.QUEUED:
                self._end(job_id, JobStatus.CANCELED, None, None)
            else:
                self.db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.require(job_id)

    @serialized
    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """See :meth:`JobStore.events`."""
        rows = self.db.execute(
            "SELECT seq, type, data FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after)
        ).fetchall()
        return [Event(row["seq"], EventType(row["type"]), json.loads(row["data"])) for row in rows]

    @serialized
    def purge(self, now: float | None = None) -> int:
        """See :meth:`JobStore.purge`."""
        cutoff = (now or time.time()) - self.retention_s
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = [r[0] for r in self.db.execute("SELECT id FROM jobs WHERE finished_at < ?", (cutoff,)).fetchall()]
            for job_id in old:
                self.db.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
                self.db.execute("DELETE FROM idempotency_keys WHERE job_id = ?", (job_id,))
                self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return len(old)

    @serialized
    def counts(self) -> Counter[tuple[JobStatus, Priority]]:
        """See :meth:`JobStore.counts`."""
        rows = self.db.execute("SELECT status, priority, COUNT(*) FROM jobs GROUP BY status, priority").fetchall()
        return Counter({(JobStatus(s), list(Priority)[p]): n for s, p, n in rows})

    @serialized
    def close(self) -> None:
        """See :meth:`JobStore.close`."""
        self.db.close()
