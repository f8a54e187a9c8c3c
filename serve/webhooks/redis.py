"""The outbox and the keys' webhook secrets in Redis: a job's delivery is queued in the MULTI block ending the job."""

from __future__ import annotations

import time

from serve.stores import redis_client
from serve.webhooks.key_secrets import KeySecret, KeySecrets
from serve.webhooks.store import DEFAULT_RETENTION_S, Delivery, DeliveryStatus, Outbox, clipped

_PREFIX = "easel:webhooks:"
_DONE = _PREFIX + "done"  # zset: delivered and failed ids by when they finished (retention)
_TURNS = _PREFIX + "turns"  # zset: each key with deliveries by its last turn (0: not served yet)
_TURN = _PREFIX + "turn"  # counter: the turns handed out
_SECRET = _PREFIX + "secret:"  # hash per key: current, previous, previous_until (hex secrets)


def _key(delivery_id: str) -> str:
    return f"{_PREFIX}delivery:{delivery_id}"


def _source_key(source: str) -> str:
    return f"{_PREFIX}source:{source}"


def _due(key_id: str | None) -> str:
    """A key's zset of pending ids by due time (next attempt, or lease end while one is sending it).

    An open API's is the one every delivery was in before deliveries had keys.
    """
    return f"{_PREFIX}due:{key_id}" if key_id else f"{_PREFIX}due"


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
            "key_id": delivery.key_id or "",
        },
    )
    pipe.zadd(_due(delivery.key_id), {delivery.id: delivery.due_at})
    pipe.zadd(_TURNS, {delivery.key_id or "": 0}, nx=True)
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
        key_id=fields.get("key_id") or None,
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
        fields = self.redis.hgetall(_key(delivery_id))
        return _delivery(delivery_id, fields, fields and self.redis.zscore(_due(fields.get("key_id")), delivery_id))

    def of_source(self, source: str) -> list[Delivery]:
        """See :meth:`Outbox.of_source`."""
        found = [self.get(delivery_id) for delivery_id in self.redis.lrange(_source_key(source), 0, -1)]
        return [delivery for delivery in found if delivery is not None]

    def _claim(self, worker: str, lease_s: float, max_attempts: int, now: float, skipped: set[str]) -> Delivery | None:
        """See :meth:`Outbox._claim`."""
        while (due := self._first_due(now, skipped)) is not None:
            key_id, delivery_id = due
            turn = self.redis.incr(_TURN)
            claimed = self.redis.transaction(
                lambda pipe, key_id=key_id, delivery_id=delivery_id, turn=turn: self._take(
                    pipe, delivery_id, key_id, worker, lease_s, max_attempts, now, turn
                ),
                _key(delivery_id),
                _due(key_id),
                value_from_callable=True,
            )
            if claimed is not None:
                return claimed
        return None

    def _first_due(self, now: float, skipped: set[str]) -> tuple[str, str] | None:
        """The key served least recently with a due delivery (not one of ``skipped``), and its delivery due first.

        Keys served as recently (none yet) go by their first due delivery.
        """
        turns = dict(self.redis.zrange(_TURNS, 0, -1, withscores=True))
        turns.setdefault("", 0.0)  # an open API's deliveries (and those kept from before deliveries had keys)
        keys = [key_id for key_id in turns if key_id not in skipped]
        pipe = self.redis.pipeline(transaction=False)
        for key_id in keys:
            pipe.zrangebyscore(_due(key_id), "-inf", now, start=0, num=1, withscores=True)
        found = [(turns[k], due[0][1], k, due[0][0]) for k, due in zip(keys, pipe.execute(), strict=True) if due]
        return min(found)[2:] if found else None

    def _take(self, pipe, delivery_id: str, key_id: str, worker: str, lease_s, max_attempts: int, now: float, turn):
        """Lease ``delivery_id`` if it is still due (None: it was not, or it failed now; look again)."""
        fields, due_at = pipe.hgetall(_key(delivery_id)), pipe.zscore(_due(key_id), delivery_id)
        if due_at is None or due_at > now:  # another sender took it meanwhile
            return None
        pipe.multi()
        if fields.get("status") != DeliveryStatus.PENDING:  # not a pending row: never due again
            pipe.zrem(_due(key_id), delivery_id)
            return None
        if int(fields.get("attempts", 0)) >= max_attempts:
            self._finish(
                pipe, delivery_id, key_id, DeliveryStatus.FAILED, "its sender stopped during its last attempt", now
            )
            return None
        attempts = int(fields.get("attempts", 0)) + 1
        pipe.hset(_key(delivery_id), mapping={"attempts": attempts, "worker": worker})
        pipe.zadd(_due(key_id), {delivery_id: now + lease_s})
        pipe.zadd(_TURNS, {key_id: turn})
        return _delivery(delivery_id, fields | {"attempts": str(attempts)}, now + lease_s)

    @staticmethod
    def _finish(pipe, delivery_id: str, key_id: str | None, status: DeliveryStatus, outcome: str, now: float) -> None:
        """Queue a delivery's end (in a MULTI block)."""
        fields = {"status": status.value, "outcome": clipped(outcome), "finished_at": repr(now)}
        pipe.hset(_key(delivery_id), mapping=fields)
        pipe.hdel(_key(delivery_id), "worker")
        pipe.zrem(_due(key_id), delivery_id)
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
                self._finish(pipe, delivery_id, fields.get("key_id"), status, outcome, time.time())
            else:
                pipe.hset(_key(delivery_id), "outcome", clipped(outcome))
                pipe.hdel(_key(delivery_id), "worker")
                pipe.zadd(_due(fields.get("key_id")), {delivery_id: retry_at})
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
        for key_id in self.redis.zrange(_TURNS, 0, -1):  # the turns of keys with nothing pending
            self.redis.transaction(lambda pipe, key_id=key_id: self._forget_turn(pipe, key_id), _due(key_id))
        return len(gone)

    @staticmethod
    def _forget_turn(pipe, key_id: str) -> None:
        """Drop ``key_id``'s turn if it has nothing pending (a delivery added meanwhile aborts it: WATCHed)."""
        empty = pipe.zcard(_due(key_id)) == 0
        pipe.multi()
        if empty:
            pipe.zrem(_TURNS, key_id)

    def close(self) -> None:
        """See :meth:`Outbox.close`."""
        self.redis.close()


class RedisKeySecrets(KeySecrets):
    """The keys' webhook secrets in Redis, a hash per key."""

    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)

    def _rotate(self, key_id: str, secret: bytes, previous_until: float) -> None:
        def change(pipe) -> None:
            current = pipe.hget(_SECRET + key_id, "current")
            pipe.multi()
            moved = {"previous": current, "previous_until": repr(previous_until)} if current else {}
            pipe.hset(_SECRET + key_id, mapping={"current": secret.hex(), **moved})

        self.redis.transaction(change, _SECRET + key_id)

    def _get(self, key_id: str) -> KeySecret | None:
        fields = self.redis.hgetall(_SECRET + key_id)
        if not fields:
            return None
        previous = bytes.fromhex(fields["previous"]) if fields.get("previous") else None
        return KeySecret(bytes.fromhex(fields["current"]), previous, float(fields.get("previous_until") or 0))

    def close(self) -> None:
        """See :meth:`KeySecrets.close`."""
        self.redis.close()
