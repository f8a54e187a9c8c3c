"""The job store in Redis (a stack that spans machines)."""

from __future__ import annotations

import json
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
from serve.stores import redis_client
from serve.webhooks import redis as outbox

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


def _dumps(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)


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
            stage=Stage(fields.get("stage", Stage.DENOISE)),
            attempts=int(fields.get("attempts", 0)),
            cancel_requested=fields.get("cancel_requested") == "1",
            result=json.loads(fields["result"]) if fields.get("result") else None,
            error=json.loads(fields["error"]) if fields.get("error") else None,
            owner=fields.get("owner") or None,
            failures=tuple(json.loads(fields["failures"])) if fields.get("failures") else (),
            seq=int(fields.get("seq", 0)),
        )

    @staticmethod
    def _append(pipe, job_id: str, fields: dict[str, str], type_: EventType, data: dict) -> None:
        """Queue an event (in a MULTI block whose job hash ``fields`` were read under WATCH)."""
        seq = int(fields.get("seq", 0)) + 1
        fields["seq"] = str(seq)
        pipe.hset(_job_key(job_id), "seq", seq)
        pipe.rpush(_events_key(job_id), json.dumps({"seq": seq, "type": type_.value, "data": data}))

    def _atomically(self, change: Callable, idempotency: tuple[str, str] | None, owner: Owner | None):
        """See :meth:`JobStore._atomically`: an optimistic transaction watching the key and the owner's open set."""
        watched = [_idempotency_key(idempotency[0])] if idempotency else []
        watched += [_OPEN + owner.key_id] if owner else []
        return self.redis.transaction(change, *watched, value_from_callable=True)

    def _idempotency_record(self, tx, key: str) -> tuple[str, str] | None:
        """See :meth:`JobStore._idempotency_record`."""
        earlier = tx.get(_idempotency_key(key))
        return None if earlier is None else tuple(earlier.split(" ", 1))

    def _exists(self, tx, job_id: str) -> bool:
        """See :meth:`JobStore._exists`."""
        return bool(tx.exists(_job_key(job_id)))

    def _unfinished(self, tx, key_id: str) -> int:
        """See :meth:`JobStore._unfinished`."""
        return tx.scard(_OPEN + key_id)

    def _add(self, tx, job_id: str, request: dict, priority: Priority, owner: Owner | None) -> None:
        """See :meth:`JobStore._add`: the reads are done, so the transaction's writes (MULTI) begin here."""
        # A counter, not the clock: two submissions in one millisecond still leave in the order they came.
        now, score = time.time(), _queue_score(priority.rank, self.redis.incr(_SUBMITTED))
        fields = {
            "status": JobStatus.QUEUED.value,
            "priority": str(priority.rank),
            "queue_score": repr(score),
            "request": json.dumps(request),
            "created_at": repr(now),
            "seq": "0",
        } | ({"owner": owner.key_id} if owner else {})
        tx.multi()
        tx.hset(_job_key(job_id), mapping=fields)
        if owner is not None:
            tx.sadd(_OPEN + owner.key_id, job_id)
        tx.zadd(_CREATED, {job_id: now})
        tx.zadd(_QUEUE, {job_id: score})

    def _record_idempotency(self, tx, idempotency: tuple[str, str], job_id: str) -> None:
        """See :meth:`JobStore._record_idempotency`."""
        tx.set(_idempotency_key(idempotency[0]), f"{idempotency[1]} {job_id}")

    def get(self, job_id: str) -> Job | None:
        """See :meth:`JobStore.get`."""
        return self._job(job_id, self.redis.hgetall(_job_key(job_id)))

    def list(
        self, status: JobStatus | None = None, limit: int = 20, after: str | None = None, owner: str | None = None
    ) -> list[Job]:
        """See :meth:`JobStore.list`."""
        start = 0
        if after is not None:  # another owner's job is as unknown as a missing one
            rank = self.redis.zrevrank(_CREATED, after)
            if owner is not None and rank is not None and self.redis.hget(_job_key(after), "owner") != owner:
                rank = None
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
                error = None if job.cancel_requested else attempts_exhausted(job_id)
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
                "stage": Stage.DENOISE.value,
            },
        )
        self._append(pipe, job_id, fields, EventType.RUNNING, {"attempt": job.attempts + 1})
        return job_id

    def _owned(self, pipe, job_id: str, worker: str) -> dict[str, str]:
        fields = pipe.hgetall(_job_key(job_id))
        if fields.get("worker") != worker or fields.get("status") != JobStatus.RUNNING.value:
            raise LeaseLost(job_id)
        return fields

    def progress(self, job_id: str, worker: str, lease_s: float, progress: Progress) -> bool:
        """See :meth:`JobStore.progress`."""

        def record(pipe) -> bool:
            fields = self._owned(pipe, job_id, worker)
            pipe.multi()
            at = {"step": progress.step, "total": progress.total, "stage": progress.stage.value}
            pipe.hset(_job_key(job_id), mapping=at)
            pipe.zadd(_LEASES, {job_id: time.time() + lease_s})
            data = progress_data(progress)
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

    def failed_attempt(self, job_id: str, worker: str, lease_s: float, record: dict) -> bool:
        """See :meth:`JobStore.failed_attempt`."""

        def add(pipe) -> bool:
            fields = self._owned(pipe, job_id, worker)
            failures = [*json.loads(fields.get("failures") or "[]"), record]
            pipe.multi()
            pipe.hset(_job_key(job_id), "failures", json.dumps(failures))
            pipe.zadd(_LEASES, {job_id: time.time() + lease_s})
            self._append(pipe, job_id, fields, EventType.ATTEMPT_FAILED, record)
            return fields.get("cancel_requested") == "1"

        return self.redis.transaction(add, _job_key(job_id), value_from_callable=True)

    def _end(self, pipe, job_id: str, fields: dict, status: JobStatus, result: dict | None, error: dict | None) -> None:
        """Queue the end of a job (in a MULTI block)."""
        ended = {
            "status": status.value,
            "finished_at": repr(time.time()),
            "result": _dumps(result) or "",
            "error": _dumps(error) or "",
        }
        pipe.hset(_job_key(job_id), mapping=ended)
        pipe.hdel(_job_key(job_id), "worker")
        pipe.zrem(_QUEUE, job_id)
        pipe.zrem(_LEASES, job_id)
        if fields.get("owner"):
            pipe.srem(_OPEN + fields["owner"], job_id)
        self._append(pipe, job_id, fields, *final_event(status, result, error))
        if (delivery := webhook_delivery(self._job(job_id, fields | ended))) is not None:
            outbox.add_in(pipe, delivery)

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
