"""The outbox in Redis: a job's delivery is queued in the MULTI block that ends the job."""

from __future__ import annotations

import time

from serve.stores import redis_client
from serve.webhooks.store import DEFAULT_RETENTION_S, Delivery, DeliveryStatus, Outbox, clipped

_PREFIX = "easel:webhooks:"
_DUE = _PREFIX + "due"  # zset: pending ids by due time (next attempt, or lease end while one is sending it)
_DONE = _PREFIX + "done"  # zset: delivered and failed ids by when they finished (retention)


def _key(delivery_id: str) -> str:
    return f"{_PREFIX}delivery:{delivery_id}"


def _source_key(source: str) -> str:
    return f"{_PREFIX}source:{source}"


def add_in(pipe, delivery: Delivery) -> None:
    """Queue ``delivery``'s writes in ``pipe`` (a MULTI block: the caller's transaction)."""
    pipe.hset(
        _key(delivery.id),
        mapping={
            "url": delivery.url,
            "body": delivery.body,
            "source": delivery.source,
            "created_at": repr(delivery.created_at),
            "status": delivery.status.value,
            "attempts": delivery.attempts,
        },
    )
    pipe.zadd(_DUE, {delivery.id: delivery.due_at})
    pipe.rpush(_source_key(delivery.source), delivery.id)


def _delivery(delivery_id: str, fields: dict[str, str], due_at: float | None) -> Delivery | None:
    if not fields:
        return None
    return Delivery(
        id=delivery_id,
        url=fields["url"],
        body=fields["body"],
        source=fields["source"],
        created_at=float(fields["created_at"]),
        status=DeliveryStatus(fields["status"]),
        attempts=int(fields.get("attempts", 0)),
        due_at=due_at or 0.0,
        outcome=fields.get("outcome") or None,
        finished_at=float(fields["finished_at"]) if fields.get("finished_at") else None,
    )


class RedisOutbox(Outbox):
    """Deliveries in Redis (a stack across machines): each change one optimistic transaction (WATCH/MULTI)."""

    def __init__(self, url: str, retention_s: float = DEFAULT_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.redis = redis_client(url)

    def add(self, delivery: Delivery) -> None:
        """See :meth:`Outbox.add`."""
        pipe = self.redis.pipeline(transaction=True)
        add_in(pipe, delivery)
        pipe.execute()

    def get(self, delivery_id: str) -> Delivery | None:
        """See :meth:`Outbox.get`."""
        return _delivery(delivery_id, self.redis.hgetall(_key(delivery_id)), self.redis.zscore(_DUE, delivery_id))

    def of_source(self, source: str) -> list[Delivery]:
        """See :meth:`Outbox.of_source`."""
        found = [self.get(delivery_id) for delivery_id in self.redis.lrange(_source_key(source), 0, -1)]
        return [delivery for delivery in found if delivery is not None]

    def claim(self, worker: str, lease_s: float, max_attempts: int, now: float | None = None) -> Delivery | None:
        """See :meth:`Outbox.claim`."""
        now = time.time() if now is None else now
        while due := self.redis.zrangebyscore(_DUE, "-inf", now, start=0, num=1):
            claimed = self.redis.transaction(
                lambda pipe, delivery_id=due[0]: self._take(pipe, delivery_id, worker, lease_s, max_attempts, now),
                _key(due[0]),
                _DUE,
                value_from_callable=True,
            )
            if claimed is not None:
                return claimed
        return None

    def _take(self, pipe, delivery_id: str, worker: str, lease_s: float, max_attempts: int, now: float):
        """Lease ``delivery_id`` if it is still due (None: it was not, or it failed now; look again)."""
        fields, due_at = pipe.hgetall(_key(delivery_id)), pipe.zscore(_DUE, delivery_id)
        if due_at is None or due_at > now:  # another sender took it meanwhile
            return None
        pipe.multi()
        if fields.get("status") != DeliveryStatus.PENDING:  # not a pending row: never due again
            pipe.zrem(_DUE, delivery_id)
            return None
        if int(fields.get("attempts", 0)) >= max_attempts:
            self._finish(pipe, delivery_id, DeliveryStatus.FAILED, "its sender stopped during its last attempt", now)
            return None
        attempts = int(fields.get("attempts", 0)) + 1
        pipe.hset(_key(delivery_id), mapping={"attempts": attempts, "worker": worker})
        pipe.zadd(_DUE, {delivery_id: now + lease_s})
        return _delivery(delivery_id, fields | {"attempts": str(attempts)}, now + lease_s)

    @staticmethod
    def _finish(pipe, delivery_id: str, status: DeliveryStatus, outcome: str, now: float) -> None:
        """Queue a delivery's end (in a MULTI block)."""
        fields = {"status": status.value, "outcome": clipped(outcome), "finished_at": repr(now)}
        pipe.hset(_key(delivery_id), mapping=fields)
        pipe.hdel(_key(delivery_id), "worker")
        pipe.zrem(_DUE, delivery_id)
        pipe.zadd(_DONE, {delivery_id: now})

    def record(self, delivery_id: str, worker: str, outcome: str, delivered: bool, retry_at: float | None) -> bool:
        """See :meth:`Outbox.record`."""

        def change(pipe) -> bool:
            fields = pipe.hgetall(_key(delivery_id))
            if fields.get("worker") != worker or fields.get("status") != DeliveryStatus.PENDING:
                return False
            pipe.multi()
            if delivered or retry_at is None:
                status = DeliveryStatus.DELIVERED if delivered else DeliveryStatus.FAILED
                self._finish(pipe, delivery_id, status, outcome, time.time())
            else:
                pipe.hset(_key(delivery_id), "outcome", clipped(outcome))
                pipe.hdel(_key(delivery_id), "worker")
                pipe.zadd(_DUE, {delivery_id: retry_at})
            return True

        return self.redis.transaction(change, _key(delivery_id), value_from_callable=True)

    def purge(self, now: float | None = None) -> int:
        """See :meth:`Outbox.purge`."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        gone = self.redis.zrangebyscore(_DONE, "-inf", cutoff)
        for delivery_id in gone:
            source = self.redis.hget(_key(delivery_id), "source")
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(_key(delivery_id))
            pipe.zrem(_DONE, delivery_id)
            if source is not None:
                pipe.lrem(_source_key(source), 0, delivery_id)
            pipe.execute()
        return len(gone)

    def close(self) -> None:
        """See :meth:`Outbox.close`."""
        self.redis.close()
