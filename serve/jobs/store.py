"""The job store: jobs, their events, idempotency keys and worker leases, in SQLite or Redis (picked by URL).

Both implementations keep the same contract (:class:`JobStore`), tested against each: a job is claimed atomically by
one worker with a lease; the worker renews it while it runs (:meth:`JobStore.progress`, :meth:`JobStore.heartbeat`);
a worker that dies stops renewing, its lease expires and the job is claimed again (at most
:data:`~serve.jobs.model.MAX_ATTEMPTS` times). Jobs are claimed highest priority first, then oldest first. Every
change a client can watch appends an event with the next sequence number, which is how ``/events`` streams.
A job submitted with a key has that key as its :class:`~serve.jobs.model.Owner`: the cap on the key's unfinished
jobs is checked in the same transaction that adds one, so it holds across replicas.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter

from serve.errors import Conflict, NotFound
from serve.jobs.model import (
    DEFAULT_RETENTION_S,
    FINAL_EVENTS,
    MAX_ATTEMPTS,
    Event,
    EventType,
    Job,
    JobStatus,
    Owner,
    new_job_id,
)
from serve.priority import Priority
from serve.stores import redis_client, scheme, serialized, sqlite_connect


class LeaseLost(RuntimeError):
    """The worker no longer holds the job (its lease expired and another worker took it, or it was deleted)."""


class JobStore(ABC):
    """What the API, the job runner and the generation loop need from the store."""

    def __init__(self, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.retention_s = retention_s

    @abstractmethod
    def submit(
        self,
        request: dict,
        priority: Priority,
        idempotency: tuple[str, str] | None = None,
        owner: Owner | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; with ``idempotency`` (key, body hash) the key's earlier job is returned instead.

        Returns the job and whether it was created. A key used before for another body is a :class:`Conflict`; an
        ``owner`` with as many unfinished jobs as it may have gets :class:`~serve.errors.Overloaded`.
        """

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abstractmethod
    def list(
        self, status: JobStatus | None = None, limit: int = 20, after: str | None = None, owner: str | None = None
    ) -> list[Job]:
        """Jobs newest first, optionally of one status or one owner, after the job ``after`` (a page's last id)."""

    @abstractmethod
    def claim(self, worker: str, lease_s: float, priorities: tuple[Priority, ...] = tuple(Priority)) -> Job | None:
        """Take the most urgent, oldest job of ``priorities`` that is queued or whose worker's lease expired."""

    @abstractmethod
    def progress(self, job_id: str, worker: str, lease_s: float, step: int, total: int, preview: str | None) -> bool:
        """Record a step (an event) and renew the lease; return whether a cancel was asked. :class:`LeaseLost`."""

    @abstractmethod
    def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Renew the lease; return whether a cancel was asked. :class:`LeaseLost` if the job is no longer ours."""

    @abstractmethod
    def finish(self, job_id: str, worker: str, status: JobStatus, result: dict | None, error: dict | None) -> None:
        """End the job (succeeded, failed or canceled) with its final event. :class:`LeaseLost`."""

    @abstractmethod
    def cancel(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one is asked to stop. :class:`NotFound`, :class:`Conflict`."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The job's events with a sequence number over ``after``."""

    @abstractmethod
    def purge(self, now: float | None = None) -> int:
        """Delete jobs finished longer than the retention ago (with their events); return how many."""

    @abstractmethod
    def counts(self) -> Counter[tuple[JobStatus, Priority]]:
        """Jobs by status and priority (for metrics)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def require(self, job_id: str) -> Job:
        """The job, or :class:`NotFound` naming the id."""
        job = self.get(job_id)
        if job is None:
            raise self.missing(job_id)
        return job

    def missing(self, job_id: str) -> NotFound:
        """The 404 of a job id that is not there (or not the caller's to see)."""
        return NotFound(f"job_id: no job {job_id!r} (finished jobs are kept {self.retention_s / 3600:g} h)", "id")


def _idempotency_conflict(key: str) -> Conflict:
    return Conflict(f"Idempotency-Key: {key!r} was used before with a different request body", field="Idempotency-Key")


def _final_event(status: JobStatus, result: dict | None, error: dict | None) -> tuple[EventType, dict]:
    data = {"status": status.value}
    if result is not None:
        data.update(result)
    if error is not None:
        data["error"] = error
    return FINAL_EVENTS[status], data


def _attempts_exhausted(job_id: str) -> dict:
    return {
        "message": f"the worker running job {job_id} died {MAX_ATTEMPTS} times; not retried again",
        "type": "server_error",
        "param": None,
        "code": 500,
    }


def _dumps(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)


# --------------------------------------------------------------------------------------------------- SQLite

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
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    result TEXT,
    error TEXT,
    seq INTEGER NOT NULL DEFAULT 0,
    owner TEXT
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
        self.db = sqlite_connect(url)
        self._lock = threading.RLock()
        self.db.executescript(_SCHEMA)
        if "owner" not in {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}:
            self.db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a store made before jobs had owners
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
            attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]),
            result=json.loads(row["result"]) if row["result"] else None,
            error=json.loads(row["error"]) if row["error"] else None,
            owner=row["owner"],
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
    def submit(
        self,
        request: dict,
        priority: Priority,
        idempotency: tuple[str, str] | None = None,
        owner: Owner | None = None,
    ) -> tuple[Job, bool]:
        """See :meth:`JobStore.submit`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if idempotency is not None:
                row = self.db.execute(
                    "SELECT body_hash, job_id FROM idempotency_keys WHERE key = ?", (idempotency[0],)
                ).fetchone()
                if row is not None:
                    if row["body_hash"] != idempotency[1]:
                        raise _idempotency_conflict(idempotency[0])
                    earlier = self.db.execute("SELECT * FROM jobs WHERE id = ?", (row["job_id"],)).fetchone()
                    if earlier is not None:
                        return self._job(earlier), False
            if owner is not None:
                owner.refuse_if_full(
                    self.db.execute(
                        "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ('queued', 'running')", (owner.key_id,)
                    ).fetchone()[0]
                )
            job_id = new_job_id()
            self.db.execute(
                "INSERT INTO jobs (id, status, priority, request, created_at, owner) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    JobStatus.QUEUED.value,
                    priority.rank,
                    json.dumps(request),
                    time.time(),
                    owner and owner.key_id,
                ),
            )
            if idempotency is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO idempotency_keys (key, body_hash, job_id) VALUES (?, ?, ?)",
                    (*idempotency, job_id),
                )
            return self._job(self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()), True

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
        if after is not None:
            anchor = self.db.execute("SELECT created_at FROM jobs WHERE id = ?", (after,)).fetchone()
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
                error = None if job.cancel_requested else _attempts_exhausted(job.id)
                self._end(job.id, JobStatus.CANCELED if job.cancel_requested else JobStatus.FAILED, None, error)
            else:
                return None
            self.db.execute(
                "UPDATE jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), step = 0 WHERE id = ?",
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
    def progress(self, job_id: str, worker: str, lease_s: float, step: int, total: int, preview: str | None) -> bool:
        """See :meth:`JobStore.progress`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self._owned(job_id, worker)
            self.db.execute(
                "UPDATE jobs SET step = ?, total = ?, lease_until = ? WHERE id = ?",
                (step, total, time.time() + lease_s, job_id),
            )
            data = {"step": step, "total": total} | ({"preview": preview} if preview else {})
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
        self._append(job_id, *_final_event(status, result, error))

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


# ---------------------------------------------------------------------------------------------------- Redis

_PREFIX = "easel:"
_CREATED = _PREFIX + "jobs:created"  # zset: id by creation time (listing)
_QUEUE = _PREFIX + "jobs:queue"  # zset: queued ids by (priority, submission number)
_SUBMITTED = _PREFIX + "jobs:submitted"  # counter: submission numbers (first in, first out within a priority)
_LEASES = _PREFIX + "jobs:leases"  # zset: running ids by lease expiry
_OPEN = _PREFIX + "jobs:open:"  # set per owner: its queued and running ids
_RANK_SPAN = 1e14  # queue score = rank x span + submission number (exact in a double)


def _job_key(job_id: str) -> str:
    return f"{_PREFIX}job:{job_id}"


def _events_key(job_id: str) -> str:
    return f"{_PREFIX}job:{job_id}:events"


def _idempotency_key(key: str) -> str:
    return f"{_PREFIX}idempotency:{key}"


def _queue_score(rank: int, number: int) -> float:
    return rank * _RANK_SPAN + number


class RedisJobStore(JobStore):
    """Jobs in Redis, for a stack that spans machines: every change is one optimistic transaction (WATCH/MULTI)."""

    def __init__(self, url: str, retention_s: float = DEFAULT_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.redis = redis_client(url)

    @staticmethod
    def _job(job_id: str, fields: dict[str, str]) -> Job | None:
        if not fields:
            return None

        def number(name: str) -> float | None:
            return float(fields[name]) if fields.get(name) else None

        return Job(
            id=job_id,
            status=JobStatus(fields["status"]),
            priority=list(Priority)[int(fields["priority"])],
            request=json.loads(fields["request"]),
            created_at=float(fields["created_at"]),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            step=int(fields.get("step", 0)),
            total=int(fields.get("total", 0)),
            attempts=int(fields.get("attempts", 0)),
            cancel_requested=fields.get("cancel_requested") == "1",
            result=json.loads(fields["result"]) if fields.get("result") else None,
            error=json.loads(fields["error"]) if fields.get("error") else None,
            owner=fields.get("owner") or None,
            seq=int(fields.get("seq", 0)),
        )

    @staticmethod
    def _append(pipe, job_id: str, fields: dict[str, str], type_: EventType, data: dict) -> None:
        """Queue an event (in a MULTI block whose job hash ``fields`` were read under WATCH)."""
        seq = int(fields.get("seq", 0)) + 1
        fields["seq"] = str(seq)
        pipe.hset(_job_key(job_id), "seq", seq)
        pipe.rpush(_events_key(job_id), json.dumps({"seq": seq, "type": type_.value, "data": data}))

    def submit(
        self,
        request: dict,
        priority: Priority,
        idempotency: tuple[str, str] | None = None,
        owner: Owner | None = None,
    ) -> tuple[Job, bool]:
        """See :meth:`JobStore.submit`."""
        # A counter, not the clock: two submissions in one millisecond still leave in the order they came.
        job_id, now, score = new_job_id(), time.time(), _queue_score(priority.rank, self.redis.incr(_SUBMITTED))
        fields = {
            "status": JobStatus.QUEUED.value,
            "priority": str(priority.rank),
            "queue_score": repr(score),
            "request": json.dumps(request),
            "created_at": repr(now),
            "seq": "0",
        } | ({"owner": owner.key_id} if owner else {})

        def create(pipe) -> tuple[str, bool]:
            if idempotency is not None:
                earlier = pipe.get(_idempotency_key(idempotency[0]))
                if earlier is not None:
                    body_hash, earlier_id = earlier.split(" ", 1)
                    if body_hash != idempotency[1]:
                        raise _idempotency_conflict(idempotency[0])
                    if pipe.exists(_job_key(earlier_id)):
                        return earlier_id, False
            if owner is not None:
                owner.refuse_if_full(pipe.scard(_OPEN + owner.key_id))
            pipe.multi()
            pipe.hset(_job_key(job_id), mapping=fields)
            if owner is not None:
                pipe.sadd(_OPEN + owner.key_id, job_id)
            pipe.zadd(_CREATED, {job_id: now})
            pipe.zadd(_QUEUE, {job_id: score})
            if idempotency is not None:
                pipe.set(_idempotency_key(idempotency[0]), f"{idempotency[1]} {job_id}")
            return job_id, True

        watched = [_idempotency_key(idempotency[0])] if idempotency else []
        watched += [_OPEN + owner.key_id] if owner else []
        made_id, created = self.redis.transaction(create, *watched, value_from_callable=True)
        return self.get(made_id), created

    def get(self, job_id: str) -> Job | None:
        """See :meth:`JobStore.get`."""
        return self._job(job_id, self.redis.hgetall(_job_key(job_id)))

    def list(
        self, status: JobStatus | None = None, limit: int = 20, after: str | None = None, owner: str | None = None
    ) -> list[Job]:
        """See :meth:`JobStore.list`."""
        start = 0
        if after is not None:
            rank = self.redis.zrevrank(_CREATED, after)
            if rank is None:
                raise NotFound(f"after: no job {after!r}", "after")
            start = rank + 1
        found: list[Job] = []
        while len(found) < limit:
            ids = self.redis.zrevrange(_CREATED, start, start + 4 * limit - 1)
            if not ids:
                break
            start += len(ids)
            for job_id in ids:
                job = self.get(job_id)
                if job is not None and (status is None or job.status is status) and owner in (None, job.owner):
                    found.append(job)
                    if len(found) == limit:
                        break
        return found

    def claim(self, worker: str, lease_s: float, priorities: tuple[Priority, ...] = tuple(Priority)) -> Job | None:
        """See :meth:`JobStore.claim`."""
        allowed = {p.rank for p in priorities}
        while allowed:
            now = time.time()
            candidates = [
                (score, job_id, False)
                for rank in sorted(allowed)
                for job_id, score in self.redis.zrangebyscore(
                    _QUEUE, rank * _RANK_SPAN, (rank + 1) * _RANK_SPAN - 1, start=0, num=1, withscores=True
                )
            ]
            for job_id in self.redis.zrangebyscore(_LEASES, "-inf", now):
                fields = self.redis.hgetall(_job_key(job_id))
                if fields and int(fields["priority"]) in allowed:
                    # A job queued before scores were submission numbers has none: it is older than any that has.
                    score = fields.get("queue_score") or _queue_score(int(fields["priority"]), 0)
                    candidates.append((float(score), job_id, True))
            if not candidates:
                return None
            _, job_id, expired = min(candidates)
            claimed = self.redis.transaction(
                lambda pipe, job_id=job_id, expired=expired, now=now: self._take(
                    pipe, job_id, expired, worker, lease_s, now
                ),
                _job_key(job_id),
                _QUEUE,
                _LEASES,
                value_from_callable=True,
            )
            if claimed is not None:
                return self.get(job_id)

    def _take(self, pipe, job_id: str, expired: bool, worker: str, lease_s: float, now: float) -> str | None:
        """Claim ``job_id`` if it is still what the candidate scan saw (else None: scan again)."""
        fields = pipe.hgetall(_job_key(job_id))
        job = self._job(job_id, fields)
        if expired:
            lease = pipe.zscore(_LEASES, job_id)
            if job is None or job.status is not JobStatus.RUNNING or lease is None or lease >= now:
                return None
            if job.cancel_requested or job.attempts >= MAX_ATTEMPTS:
                error = None if job.cancel_requested else _attempts_exhausted(job_id)
                pipe.multi()
                self._end(
                    pipe, job_id, fields, JobStatus.CANCELED if job.cancel_requested else JobStatus.FAILED, None, error
                )
                return None
        elif job is None or job.status is not JobStatus.QUEUED or pipe.zscore(_QUEUE, job_id) is None:
            return None
        pipe.multi()
        pipe.zrem(_QUEUE, job_id)
        pipe.zadd(_LEASES, {job_id: now + lease_s})
        pipe.hset(
            _job_key(job_id),
            mapping={
                "status": JobStatus.RUNNING.value,
                "worker": worker,
                "attempts": job.attempts + 1,
                "started_at": fields.get("started_at") or repr(now),
                "step": 0,
            },
        )
        self._append(pipe, job_id, fields, EventType.RUNNING, {"attempt": job.attempts + 1})
        return job_id

    def _owned(self, pipe, job_id: str, worker: str) -> dict[str, str]:
        fields = pipe.hgetall(_job_key(job_id))
        if fields.get("worker") != worker or fields.get("status") != JobStatus.RUNNING.value:
            raise LeaseLost(job_id)
        return fields

    def progress(self, job_id: str, worker: str, lease_s: float, step: int, total: int, preview: str | None) -> bool:
        """See :meth:`JobStore.progress`."""

        def record(pipe) -> bool:
            fields = self._owned(pipe, job_id, worker)
            pipe.multi()
            pipe.hset(_job_key(job_id), mapping={"step": step, "total": total})
            pipe.zadd(_LEASES, {job_id: time.time() + lease_s})
            data = {"step": step, "total": total} | ({"preview": preview} if preview else {})
            self._append(pipe, job_id, fields, EventType.PROGRESS, data)
            return fields.get("cancel_requested") == "1"

        return self.redis.transaction(record, _job_key(job_id), value_from_callable=True)

    def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """See :meth:`JobStore.heartbeat`."""

        def renew(pipe) -> bool:
            fields = self._owned(pipe, job_id, worker)
            pipe.multi()
            pipe.zadd(_LEASES, {job_id: time.time() + lease_s})
            return fields.get("cancel_requested") == "1"

        return self.redis.transaction(renew, _job_key(job_id), value_from_callable=True)

    def _end(self, pipe, job_id: str, fields: dict, status: JobStatus, result: dict | None, error: dict | None) -> None:
        """Queue the end of a job (in a MULTI block)."""
        now = time.time()
        pipe.hset(
            _job_key(job_id),
            mapping={
                "status": status.value,
                "finished_at": repr(now),
                "result": _dumps(result) or "",
                "error": _dumps(error) or "",
            },
        )
        pipe.hdel(_job_key(job_id), "worker")
        pipe.zrem(_QUEUE, job_id)
        pipe.zrem(_LEASES, job_id)
        if fields.get("owner"):
            pipe.srem(_OPEN + fields["owner"], job_id)
        self._append(pipe, job_id, fields, *_final_event(status, result, error))

    def finish(self, job_id: str, worker: str, status: JobStatus, result: dict | None, error: dict | None) -> None:
        """See :meth:`JobStore.finish`."""

        def end(pipe) -> None:
            fields = self._owned(pipe, job_id, worker)
            pipe.multi()
            self._end(pipe, job_id, fields, status, result, error)

        self.redis.transaction(end, _job_key(job_id))

    def cancel(self, job_id: str) -> Job:
        """See :meth:`JobStore.cancel`."""

        def ask(pipe) -> None:
            fields = pipe.hgetall(_job_key(job_id))
            job = self._job(job_id, fields)
            if job is None:
                raise self.missing(job_id)
            if job.status.final:
                raise Conflict(f"job {job_id} is already {job.status.value}", "id")
            pipe.multi()
            if job.status is JobStatus.QUEUED:
                self._end(pipe, job_id, fields, JobStatus.CANCELED, None, None)
            else:
                pipe.hset(_job_key(job_id), "cancel_requested", "1")

        self.redis.transaction(ask, _job_key(job_id))
        return self.require(job_id)

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """See :meth:`JobStore.events`."""
        raw = self.redis.lrange(_events_key(job_id), after, -1)  # event seq k sits at index k - 1
        events = [json.loads(item) for item in raw]
        return [Event(e["seq"], EventType(e["type"]), e["data"]) for e in events if e["seq"] > after]

    def purge(self, now: float | None = None) -> int:
        """See :meth:`JobStore.purge`."""
        cutoff = (now or time.time()) - self.retention_s
        purged = 0
        for job_id in self.redis.zrangebyscore(_CREATED, "-inf", cutoff):
            fields = self.redis.hgetall(_job_key(job_id))
            if fields.get("finished_at") and float(fields["finished_at"]) < cutoff:
                self.redis.delete(_job_key(job_id), _events_key(job_id))
                self.redis.zrem(_CREATED, job_id)
                purged += 1
        for key in self.redis.scan_iter(_idempotency_key("*")):
            value = self.redis.get(key)
            if value is not None and not self.redis.exists(_job_key(value.split(" ", 1)[1])):
                self.redis.delete(key)
        return purged

    def counts(self) -> Counter[tuple[JobStatus, Priority]]:
        """See :meth:`JobStore.counts`."""
        found: Counter[tuple[JobStatus, Priority]] = Counter()
        for job_id in self.redis.zrange(_CREATED, 0, -1):
            fields = self.redis.hmget(_job_key(job_id), "status", "priority")
            if fields[0] is not None:
                found[(JobStatus(fields[0]), list(Priority)[int(fields[1])])] += 1
        return found

    def close(self) -> None:
        """See :meth:`JobStore.close`."""
        self.redis.close()


def open_job_store(url: str, retention_s: float = DEFAULT_RETENTION_S) -> JobStore:
    """The job store at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteJobStore(url, retention_s)
    return RedisJobStore(url, retention_s)
